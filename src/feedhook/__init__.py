"""feedhook: turn pull-style event feeds into signed, retried webhooks."""

from typing import TYPE_CHECKING, Any

from feedhook.config import Config, ConfigError, load_config
from feedhook.envelope import Envelope

if TYPE_CHECKING:
    from feedhook.settings import Settings

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Settings on first use: the ingest process never reads the environment itself, and
    # pydantic-settings is 6 MB it need not load.
    if name == "Settings":
        from feedhook.settings import Settings

        return Settings
    raise AttributeError(f"module 'feedhook' has no attribute {name!r}")


__all__ = ["Config", "ConfigError", "Envelope", "Settings", "__version__", "load_config"]
