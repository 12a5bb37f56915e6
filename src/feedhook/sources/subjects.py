"""Subjects: fetch the resource an event is about, deleted ones included, and say what
changed since feedhook last read it.

The poller hands each batch of pages over before routing it (so filters see the result):
one request per distinct subject in the batch, a few in flight at once, within the
source's own request budget; retryable failures are retried with backoff until the
batch's `max_wait` is spent, and then the event goes out with `data.resource_error`
instead. The whole batch waits for its subjects, so events keep their feed order. The
representations read are written with the batch, in the same transaction.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import backoff

from feedhook import clock, logs
from feedhook.config import EnrichConfig
from feedhook.envelope import Envelope, rfc3339_utc, with_data
from feedhook.sources.base import FeedError
from feedhook.store.base import Store, Subject

log = logging.getLogger("feedhook.source")

# Subject requests in flight at once, per source: enough to hide a round trip, few
# enough to leave the feed's own requests room in the budget.
FETCHES_IN_FLIGHT = 4
MAX_RETRY_DELAY = 30.0
# What is worth asking again: the upstream or the path to it failing for a while.
RETRYABLE = re.compile(r"timeout|connect|truncated|rate_limited|http_5\d\d")


class SubjectReader(Protocol):
    """What a feed that can enrich provides."""

    async def read_subject(self, url: str, deleted_first: bool = False) -> tuple[Any, bool] | None:
        """The resource at `url` and whether it is deleted (asked again as deleted when
        it answers 404; asked as deleted first with `deleted_first`), or None when it is
        not found either way. Raises FeedError."""
        ...


@dataclass(frozen=True, slots=True)
class Resolved:
    """What became of one subject in a batch."""

    outcome: str  # ok, deleted, not_found, failed, gave_up, refused
    representation: Any = None
    error: str | None = None
    fetched_at: float = 0.0

    @property
    def read(self) -> bool:
        return self.outcome in ("ok", "deleted")


@dataclass
class Enriched:
    """A batch's envelopes with their subjects, the representations to keep, and what it
    cost: subject outcomes and seconds waited."""

    envelopes: list[Envelope]
    subjects: list[Subject] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    waited: float = 0.0


class Enricher:
    """One source's subject fetching (its `enrich` setting)."""

    def __init__(
        self, source: str, config: EnrichConfig, reader: SubjectReader, api_url: str
    ) -> None:
        self.source = source
        self.config = config
        self.reader = reader
        self.origin = _origin(api_url)
        self._types = re.compile("|".join(f"(?:{fnmatch.translate(t)})" for t in config.types))
        self._in_flight = asyncio.Semaphore(FETCHES_IN_FLIGHT)

    def wants(self, envelope: Envelope) -> bool:
        """An event of an enriched upstream type (`job_updated`) that names a subject."""
        _, _, kind = envelope.type.partition(".")
        upstream_type = kind.replace(".", "_")
        return envelope.subject is not None and self._types.match(upstream_type) is not None

    async def enrich(self, envelopes: Sequence[Envelope], store: Store) -> Enriched:
        wanted = [e for e in envelopes if self.wants(e)]
        if not wanted:
            return Enriched(list(envelopes))
        started = asyncio.get_running_loop().time()
        urls = list(dict.fromkeys(e.subject for e in wanted if e.subject is not None))
        # A subject the batch deletes is most likely gone: asked for as deleted first.
        deletions = {e.subject for e in wanted if e.type.endswith(".deleted")}
        kept = await store.subjects(self.source, urls) if self.config.diff else {}
        deadline = started + self.config.max_wait
        fetches = (self._resolve(url, url in deletions, deadline) for url in urls)
        resolved = dict(zip(urls, await asyncio.gather(*fetches), strict=True))
        result = Enriched([], outcomes=Counter(r.outcome for r in resolved.values()))
        before = {url: subject.representation for url, subject in kept.items()}
        for envelope in envelopes:
            if not self.wants(envelope) or envelope.subject is None:
                result.envelopes.append(envelope)
                continue
            url = envelope.subject
            got = resolved[url]
            result.envelopes.append(with_data(envelope, self._data(envelope, got, before, url)))
            if got.read:
                before[url] = got.representation  # the next event about it in the batch
        if self.config.diff:
            result.subjects = [
                Subject(url, got.representation, got.outcome == "deleted", got.fetched_at)
                for url, got in resolved.items()
                if got.read
            ]
        result.waited = asyncio.get_running_loop().time() - started
        return result

    def _data(
        self, envelope: Envelope, got: Resolved, before: dict[str, Any], url: str
    ) -> dict[str, Any]:
        data = dict(envelope.data)
        data["resource"] = got.representation if got.read else None
        if got.read:
            data["resource_fetched_at"] = rfc3339_utc(datetime.fromtimestamp(got.fetched_at, UTC))
        if got.outcome == "deleted":
            data["resource_deleted"] = True
        if got.error is not None:
            data["resource_error"] = got.error
        if self.config.diff and got.read and url in before:
            data["diff"] = diff(before[url], got.representation)
        return data

    async def _resolve(self, url: str, deleted_first: bool, deadline: float) -> Resolved:
        """One subject, retried until `deadline` (loop time) while failures are retryable."""
        if _origin(url) != self.origin:
            return Resolved(
                "refused",
                error=f"the subject is not on {self.origin}, this source's API: not fetched"
                " (the source's credentials are sent nowhere else)",
            )
        last: list[str] = []

        def note(details: Any) -> None:
            message = logs.redact(str(details["exception"]))
            last.append(message)
            log.info(
                "%s: subject %s failed (%s); retrying",
                self.source,
                logs.redact_url(url),
                message,
                extra={"source": self.source},
            )

        retrying = backoff.on_exception(
            backoff.expo,
            FeedError,
            giveup=lambda exc: not RETRYABLE.fullmatch(getattr(exc, "cause", "")),
            on_backoff=note,
            jitter=backoff.full_jitter,
            factor=0.5,
            max_value=MAX_RETRY_DELAY,
            logger=None,
        )(self._read)
        try:
            async with asyncio.timeout_at(deadline):
                found = await retrying(url, deleted_first)
        except TimeoutError:
            why = f"; last: {last[-1]}" if last else ""
            return Resolved(
                "gave_up", error=f"not read within max_wait ({self.config.max_wait:g}s){why}"
            )
        except FeedError as exc:
            return Resolved("failed", error=logs.redact(str(exc)))
        except Exception as exc:  # a bug reading one odd resource must not stop the feed
            log.exception("%s: unexpected error reading subject %s", self.source, url)
            return Resolved("failed", error=f"unexpected {type(exc).__name__}")
        if found is None:
            return Resolved("not_found", error="not found (404), not even as deleted")
        representation, deleted = found
        return Resolved("deleted" if deleted else "ok", representation, fetched_at=clock.now())

    async def _read(self, url: str, deleted_first: bool) -> tuple[Any, bool] | None:
        async with self._in_flight:
            return await self.reader.read_subject(url, deleted_first)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def attributes(representation: Any) -> dict[str, Any]:
    """A representation's attributes and links by the names events' `changes` use:
    attributes as in the XML (`due-date`), links by their rel (`self`, `tasks`)."""
    if not isinstance(representation, dict):
        return {}
    out: dict[str, Any] = {}
    for key, value in representation.items():
        if key == "link" and isinstance(value, list):  # XML: [{rel, href}, ...]
            for link in value:
                if isinstance(link, dict) and "rel" in link:
                    out[str(link["rel"])] = link.get("href")
        elif key.endswith("_link"):  # JSON: self_link, tasks_link, ...
            out[key.removesuffix("_link")] = value
        else:
            out[key.replace("_", "-")] = value
    return out


def diff(old: Any, new: Any) -> dict[str, dict[str, Any]]:
    """`{name: {"old": ..., "new": ...}}` for every attribute and link that differs;
    one that appeared has `old` null, one that went away `new` null."""
    before, after = attributes(old), attributes(new)
    return {
        name: {"old": before.get(name), "new": after.get(name)}
        for name in sorted(before.keys() | after.keys())
        if before.get(name) != after.get(name)
    }
