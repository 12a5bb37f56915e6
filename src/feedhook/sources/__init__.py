"""Upstream feeds, one module per family."""

from feedhook.config import ModuloSource, MovidaSource, SequenceSource, TeamHubSource
from feedhook.sources.base import FeedError, Page, Source
from feedhook.sources.bebanjo import BebanjoFeed
from feedhook.sources.modulo import ModuloFeed
from feedhook.sources.teamhub import TeamHubFeed


def build_source(
    name: str, config: SequenceSource | MovidaSource | TeamHubSource | ModuloSource
) -> Source:
    """The source implementation for a configured feed."""
    if isinstance(config, TeamHubSource):
        return TeamHubFeed(name, config)
    if isinstance(config, ModuloSource):
        return ModuloFeed(name, config)
    return BebanjoFeed(name, config)


__all__ = [
    "BebanjoFeed",
    "FeedError",
    "ModuloFeed",
    "Page",
    "Source",
    "TeamHubFeed",
    "build_source",
]
