"""feedhook: turn pull-style event feeds into signed, retried webhooks."""

from feedhook.config import Config, ConfigError, load_config
from feedhook.envelope import Envelope
from feedhook.settings import Settings

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "Envelope", "Settings", "__version__", "load_config"]
