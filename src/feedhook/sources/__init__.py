"""Upstream feeds, one module per family; which one reads a source is its config's
`feed` (see config.SourceConfig, the table of kinds)."""

import importlib
from typing import Any

from feedhook.config import SourceSettings
from feedhook.sources.base import FeedError, Page, Source
from feedhook.sources.bebanjo import BebanjoFeed
from feedhook.sources.modulo import ModuloFeed
from feedhook.sources.teamhub import TeamHubFeed


def build_source(name: str, config: SourceSettings) -> Source:
    """The feed that reads a configured source."""
    module, _, cls = config.feed.partition(":")
    feed: Any = getattr(importlib.import_module(module), cls)
    source: Source = feed(name, config)
    return source


__all__ = [
    "BebanjoFeed",
    "FeedError",
    "ModuloFeed",
    "Page",
    "Source",
    "TeamHubFeed",
    "build_source",
]
