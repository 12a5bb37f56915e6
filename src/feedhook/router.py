"""Which subscriptions want an event: type globs, optional sources, optional JMESPath.

A filter that fails on an event (a function given the wrong type, a field that is not
there) is that subscription's "no match" for that event, never an error of the whole
ingest: it is logged once per (subscription, error kind) a minute and counted.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jmespath
import jmespath.parser

from feedhook import clock
from feedhook.config import SubscriptionConfig
from feedhook.envelope import Envelope
from feedhook.logs import Throttle

log = logging.getLogger("feedhook.router")

FILTER_ERROR_LOG_INTERVAL = 60.0
MAX_PLANS = 10_000  # (source, type) pairs remembered


class FilterError(Exception):
    """A subscription's filter failed on one envelope."""


@dataclass(frozen=True)
class Route:
    name: str
    types: re.Pattern[str]
    sources: frozenset[str] | None
    filter: jmespath.parser.ParsedResult | None

    def wants(self, source: str, type: str) -> bool:
        """Whether the subscription takes events of this source and type (filter aside)."""
        if self.sources is not None and source not in self.sources:
            return False
        return self.types.match(type) is not None

    def accepts(self, document: Mapping[str, Any]) -> bool:
        """The filter's verdict on the envelope as a JSON document; FilterError if it fails."""
        if self.filter is None:
            return True
        try:
            return _truthy(self.filter.search(document))
        except Exception as exc:  # JMESPath raises several kinds; any is "no match"
            raise FilterError(f"{type(exc).__name__}: {exc}") from exc


def _truthy(value: Any) -> bool:
    # JMESPath truthiness: only null, false and empty strings, lists and objects are false.
    return not (value is None or value is False or value in ("", [], {}))


class Router:
    """Subscriptions compiled once at config load."""

    def __init__(self, subscriptions: Mapping[str, SubscriptionConfig]) -> None:
        self.routes = tuple(compile_route(name, sub) for name, sub in subscriptions.items())
        # The subscriptions that take each subject's events one at a time, in order.
        self.ordered = frozenset(
            name for name, sub in subscriptions.items() if sub.ordering == "subject"
        )
        # Filter failures since the last `take_filter_errors()`, by subscription.
        self.filter_errors: Counter[str] = Counter()
        self._log_gate = Throttle(FILTER_ERROR_LOG_INTERVAL)
        # Types and sources depend only on the envelope's source and type: decided once
        # per (source, type), then only filters are evaluated, and only where there is
        # one. Bounded: a feed inventing types cannot grow it without limit.
        self._plans: dict[tuple[str, str], tuple[list[str], tuple[Route, ...]]] = {}

    def match(self, envelope: Envelope) -> list[str]:
        """The names of the subscriptions that receive this envelope, in config order."""
        key = (envelope.feedhooksource, envelope.type)
        plan = self._plans.get(key) or self._plan(*key)
        names, routes = plan
        if not routes:  # no filter among them: the same answer for every such event
            return names.copy()
        matched = []
        document = envelope.to_dict()
        for route in routes:
            try:
                if route.accepts(document):
                    matched.append(route.name)
            except FilterError as exc:
                self._filter_failed(route.name, envelope.id, exc)
        return matched

    def _plan(self, source: str, type: str) -> tuple[list[str], tuple[Route, ...]]:
        """Who takes events of this source and type: their names when no filter decides,
        else the routes to ask (a route without a filter always accepts)."""
        wanting = [route for route in self.routes if route.wants(source, type)]
        filtered = any(route.filter is not None for route in wanting)
        plan = ([r.name for r in wanting], tuple(wanting) if filtered else ())
        if len(self._plans) >= MAX_PLANS:
            self._plans.clear()
        self._plans[(source, type)] = plan
        return plan

    def take_filter_errors(self) -> Counter[str]:
        """The filter failures counted since the last call, by subscription."""
        errors, self.filter_errors = self.filter_errors, Counter()
        return errors

    def _filter_failed(self, subscription: str, envelope_id: str, exc: FilterError) -> None:
        self.filter_errors[subscription] += 1
        kind = type(exc.__cause__).__name__
        held = self._log_gate.allow((subscription, kind), clock.now())
        if held is not None:
            more = f" ({held} more since the last line)" if held else ""
            log.warning(
                "subscription %s: its filter failed on %s (%s); counted as no match%s",
                subscription,
                envelope_id,
                exc,
                more,
                extra={"subscription": subscription, "envelope_id": envelope_id},
            )


def compile_route(name: str, sub: SubscriptionConfig) -> Route:
    return Route(
        name=name,
        types=re.compile("|".join(f"(?:{fnmatch.translate(t)})" for t in sub.types)),
        sources=frozenset(sub.sources) if sub.sources is not None else None,
        filter=jmespath.compile(sub.filter) if sub.filter else None,
    )
