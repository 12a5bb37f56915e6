"""Status as a document: what `feedhook status --json` and /api/status answer."""

from __future__ import annotations

from feedhook.report import status_document
from feedhook.store.base import SourceState, Status, SubscriptionCounts, SubscriptionState


def test_a_subscription_says_its_state_and_a_source_who_polls_it() -> None:
    status = Status(
        sources={"seq": SourceState("seq", "40", None, None, None, None, None, "h:41:1a")},
        subscriptions={"ops": SubscriptionCounts(pending=3)},
        replicas={"h:40:19": 1_800_000_000.0},
    )
    states = {"ops": SubscriptionState("circuit_open", "10 failures in a row", 1.8e9, 1.8e9 + 30)}
    document = status_document(status, None, states=states)
    assert document["sources"]["seq"]["polled_by"] == "h:41"
    assert list(document["replicas"]) == ["h:40"]
    state = document["subscriptions"]["ops"]["state"]
    assert state["state"] == "circuit_open" and state["reason"] == "10 failures in a row"
    assert state["since"].startswith("2027-01-15") and state["until"] is not None


def test_without_a_worker_the_stored_state_is_shown_and_a_pause_that_ended_is_over() -> None:
    status = Status(
        subscriptions={"ops": SubscriptionCounts(), "jobs": SubscriptionCounts()},
        states={
            "ops": SubscriptionState("disabled", "HTTP 410 Gone from https://x/", 1.8e9),
            "jobs": SubscriptionState("paused", "HTTP 429 with Retry-After", 1.8e9, 1.8e9 + 5),
        },
    )
    document = status_document(status, None, now=1.8e9 + 10)
    assert document["subscriptions"]["ops"]["state"]["state"] == "disabled"
    assert document["subscriptions"]["ops"]["state"]["reason"].startswith("HTTP 410")
    assert document["subscriptions"]["jobs"]["state"]["state"] == "active"
