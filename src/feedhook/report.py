"""What status and dead letters look like to people and programs: the CLI's --json
output and the admin API answer with the same documents."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from feedhook.config import Config
from feedhook.health import SourceHealth
from feedhook.logs import redact, redact_url
from feedhook.store.base import ACTIVE, DeadLetter, Status, Storage, SubscriptionState, Trace


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def _replica(owner: str) -> str:
    """A worker's id as people name it: host and process (its start time left out)."""
    host, _, rest = owner.partition(":")
    return f"{host}:{rest.partition(':')[0]}"


def status_document(
    status: Status,
    config: Config | None,
    health: Mapping[str, SourceHealth] | None = None,
    now: float | None = None,
    storage: Storage | None = None,
    states: Mapping[str, SubscriptionState] | None = None,
) -> dict[str, Any]:
    """Per source: cursor, last poll, last error (and live state when running);
    per subscription: pending, delivered, dead letters, and its state (a running
    worker's own `states`, else the stored ones)."""
    sources = sorted(set(status.sources) | set(config.sources if config else ()))
    subs = sorted(set(status.subscriptions) | set(config.subscriptions if config else ()))
    out: dict[str, Any] = {"sources": {}, "subscriptions": {}}
    for name in sources:
        state = status.sources.get(name)
        entry: dict[str, Any] = {
            "configured": config is None or name in config.sources,
            "cursor": state.cursor if state else None,
            "last_poll_at": _iso(state.last_poll_at) if state else None,
            "last_success_at": _iso(state.last_success_at) if state else None,
            "last_error": redact(state.last_error) if state and state.last_error else None,
            "last_error_at": _iso(state.last_error_at) if state else None,
        }
        if config is not None and name in config.sources:
            entry["kind"] = config.sources[name].kind
        if state is not None and state.poller is not None:
            entry["polled_by"] = _replica(state.poller)
        if health is not None and name in health and now is not None:
            live = health[name]
            entry["state"] = live.state(now)
            entry["cause"] = live.cause
            entry["newest_event_at"] = _iso(live.newest_event_at)
            entry["events_ingested"] = live.events
        out["sources"][name] = entry
    for name in subs:
        counts = status.subscriptions.get(name)
        sub = config.subscriptions.get(name) if config is not None else None
        out["subscriptions"][name] = {
            "configured": config is None or sub is not None,
            "pending": counts.pending if counts else 0,
            "delivered": counts.delivered if counts else 0,
            "dead": counts.dead_letter if counts else 0,
        }
        if sub is not None:
            out["subscriptions"][name]["url"] = redact_url(str(sub.url), query=True)
        kept = (states if states is not None else status.states).get(name, ACTIVE)
        if now is not None:
            kept = kept.at(now)
        out["subscriptions"][name]["state"] = {
            "state": kept.state,
            "reason": kept.reason,
            "since": _iso(kept.since),
            "until": _iso(kept.until),
        }
    if status.replicas:
        out["replicas"] = {_replica(owner): _iso(seen) for owner, seen in status.replicas.items()}
    if storage is not None:
        out["storage"] = {
            "events": storage.events,
            "bytes": storage.bytes,
            "free_bytes": storage.free_bytes,
        }
    return out


def dead_letter_document(letter: DeadLetter, with_event: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": letter.id,
        "subscription": letter.subscription,
        "envelope_id": letter.envelope_id,
        "type": letter.type,
        "attempts": letter.attempts,
        "status_code": letter.status_code,
        # Masked again when shown: rows stored before a secret was configured.
        "reason": redact(letter.reason),
        "response_body": None if letter.response_body is None else redact(letter.response_body),
        "failed_at": _iso(letter.failed_at),
    }
    if with_event and letter.body is not None:
        out["event"] = json.loads(letter.body)
    return out


def trace_document(trace: Trace) -> dict[str, Any]:
    """An event and, per subscription, its state and every attempt (`feedhook trace`,
    GET /api/events/{id})."""
    return {
        "envelope_id": trace.event.envelope_id,
        "source": trace.event.source,
        "type": trace.event.type,
        "ingested_at": _iso(trace.ingested_at),
        "subscriptions": {
            d.subscription: {
                "state": d.state,
                "next_attempt_at": _iso(d.next_attempt_at),
                "attempts": [
                    {
                        "at": _iso(a.at),
                        "status_code": a.status,
                        "duration_ms": None if a.duration is None else round(a.duration * 1000, 1),
                        "outcome": a.outcome,
                        "error": None if a.error is None else redact(a.error),
                    }
                    for a in d.attempts
                ],
            }
            for d in trace.deliveries
        },
        "event": json.loads(trace.event.body),
    }
