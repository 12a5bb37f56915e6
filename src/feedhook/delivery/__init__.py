"""Getting envelopes to subscribers: lanes, one attempt, the retry decision, signatures."""

from feedhook.delivery.dispatcher import Dispatcher
from feedhook.delivery.policy import AttemptResult, RetryPolicy
from feedhook.delivery.sender import Sender
from feedhook.delivery.signing import Signer

__all__ = ["AttemptResult", "Dispatcher", "RetryPolicy", "Sender", "Signer"]
