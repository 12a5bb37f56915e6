"""Which subscriptions want an event: type globs, optional sources, optional JMESPath."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jmespath
import jmespath.parser

from feedhook.config import SubscriptionConfig
from feedhook.envelope import Envelope


@dataclass(frozen=True)
class Route:
    name: str
    types: re.Pattern[str]
    sources: frozenset[str] | None
    filter: jmespath.parser.ParsedResult | None

    def matches(self, envelope: Envelope) -> bool:
        if self.sources is not None and envelope.feedhooksource not in self.sources:
            return False
        if not self.types.match(envelope.type):
            return False
        if self.filter is None:
            return True
        return _truthy(self.filter.search(envelope.to_dict()))


def _truthy(value: Any) -> bool:
    # JMESPath truthiness: only null, false and empty strings, lists and objects are false.
    return not (value is None or value is False or value in ("", [], {}))


class Router:
    """Subscriptions compiled once at config load."""

    def __init__(self, subscriptions: Mapping[str, SubscriptionConfig]) -> None:
        self.routes = tuple(
            Route(
                name=name,
                types=re.compile("|".join(f"(?:{fnmatch.translate(t)})" for t in sub.types)),
                sources=frozenset(sub.sources) if sub.sources is not None else None,
                filter=jmespath.compile(sub.filter) if sub.filter else None,
            )
            for name, sub in subscriptions.items()
        )

    def match(self, envelope: Envelope) -> list[str]:
        """The names of the subscriptions that receive this envelope."""
        return [route.name for route in self.routes if route.matches(envelope)]
