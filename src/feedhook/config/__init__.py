"""hooks.yaml: value types (`values.py`), the models (`models.py`, named `*Config`;
`SourceConfig` is the table of source kinds), and loading with errors a person can act on
(`loading.py`)."""

from feedhook.config.loading import ConfigError, load_config, parse_config
from feedhook.config.models import (
    SOURCE_KINDS,
    SOURCE_MODELS,
    Config,
    ConfigChanges,
    EnrichConfig,
    ModuloConfig,
    MovidaConfig,
    RetentionConfig,
    RetryConfig,
    SequenceConfig,
    SourceConfig,
    SourceSettings,
    SubscriptionConfig,
    TeamHubConfig,
)
from feedhook.config.values import RateLimit, check_glob, parse_duration
from feedhook.logs import redact_url

__all__ = [
    "SOURCE_KINDS",
    "SOURCE_MODELS",
    "Config",
    "ConfigChanges",
    "ConfigError",
    "EnrichConfig",
    "ModuloConfig",
    "MovidaConfig",
    "RateLimit",
    "RetentionConfig",
    "RetryConfig",
    "SequenceConfig",
    "SourceConfig",
    "SourceSettings",
    "SubscriptionConfig",
    "TeamHubConfig",
    "check_glob",
    "load_config",
    "parse_config",
    "parse_duration",
    "redact_url",
]
