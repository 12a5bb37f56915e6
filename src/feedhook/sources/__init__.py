"""Upstream feeds, one module per family."""

from feedhook.config import MovidaSource, SequenceSource
from feedhook.sources.base import FeedError, Page, Source
from feedhook.sources.bebanjo import BebanjoSource


def build_source(name: str, config: SequenceSource | MovidaSource) -> Source:
    """The source implementation for a configured feed."""
    return BebanjoSource(name, config)


__all__ = ["BebanjoSource", "FeedError", "Page", "Source", "build_source"]
