"""Logging: readable text on a terminal, JSON lines elsewhere (containers, files).

Every configured secret is masked in every line, whatever produced it: a last line of
defence behind code that never logs secrets in the first place.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
import sys
from collections.abc import Hashable, Iterable
from datetime import UTC, datetime
from urllib.parse import quote, quote_plus, urlsplit

# Fields a log call may attach with extra={...}; they become top-level JSON keys.
FIELDS = (
    "source",
    "subscription",
    "envelope_id",
    "attempt",
    "status_code",
    "duration_ms",
    "url",
)
MASK = "***"


class Redactor:
    def __init__(self) -> None:
        self.secrets: tuple[str, ...] = ()

    def update(self, secrets: Iterable[str]) -> None:
        # Each secret also as an upstream may echo it: URL-encoded (a form, a query) and
        # JSON-escaped. Longest first, so a secret containing another is masked whole.
        found: set[str] = set()
        for secret in secrets:
            if len(secret) >= 4:
                found |= {secret, quote(secret, safe=""), quote_plus(secret), _json_inner(secret)}
        self.secrets = tuple(sorted(found, key=len, reverse=True))

    def add(self, secrets: Iterable[str]) -> None:
        """Mask these as well as the ones already known (a reload adds, never forgets)."""
        self.update((*self.secrets, *secrets))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


# URLs as shown anywhere: credentials masked. Query parameters whose values are
# credentials by their name:
SENSITIVE_PARAM = re.compile(r"key|token|secret|pass|auth|sig|code|credential|session", re.I)


# Kept: every request to a feed names its address for the errors it may raise (an
# empty poll spent 4% of its CPU masking the same address again).
@functools.lru_cache(maxsize=1024)
def redact_url(url: str, *, query: bool = False) -> str:
    """The URL for logs, errors and `check`: any user:password@ part masked, and the
    values of query parameters that look like credentials (`?api_key=`); with `query`,
    every query value (a receiver's URL, whose parameters mean nothing to feedhook)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.username is not None or parts.password is not None:
        netloc = f"***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    masked = parts.query
    if parts.query:
        masked = "&".join(
            f"{name}=***" if sep and (query or SENSITIVE_PARAM.search(name)) else pair
            for pair in parts.query.split("&")
            for name, sep, _ in [pair.partition("=")]
        )
    if netloc == parts.netloc and masked == parts.query:
        return url
    return parts._replace(netloc=netloc, query=masked).geturl()


def url_secrets(url: str) -> set[str]:
    """The credentials a URL carries: its password, the Basic header aiohttp derives from
    user:password (an upstream may echo it back), and credential-like query values."""
    parts = urlsplit(url)
    found: set[str] = set()
    if parts.password:
        found.add(parts.password)
        basic = f"{parts.username or ''}:{parts.password}".encode()
        found.add(base64.b64encode(basic).decode())
    for pair in parts.query.split("&"):
        name, _, value = pair.partition("=")
        if value and SENSITIVE_PARAM.search(name):
            found.add(value)
    return found


def _json_inner(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)[1:-1]


redact = Redactor()


class Throttle:
    """At most one line per key per `interval` seconds, for failures that repeat by the
    thousand (a receiver down, a filter that fails on every event): the first is logged
    at once, the ones after it are counted, and the next line says how many there were."""

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._keys: dict[Hashable, list[float]] = {}  # key -> [last logged at, held back]

    def allow(self, key: Hashable, now: float) -> int | None:
        """None: stay quiet (counted). A number: log now, and say this many were held back."""
        entry = self._keys.get(key)
        if entry is None:
            if len(self._keys) > 10_000:  # keys come from config and causes: bounded anyway
                self._keys.clear()
            self._keys[key] = [now, 0]
            return 0
        if now - entry[0] < self.interval:
            entry[1] += 1
            return None
        held = int(entry[1])
        entry[0], entry[1] = now, 0
        return held


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        # Masked before encoding: a secret holding a quote or a backslash is escaped in the
        # JSON text and would no longer be found there.
        return json.dumps(
            {k: redact(v) if isinstance(v, str) else v for k, v in line.items()},
            ensure_ascii=False,
        )


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [
            f"{field}={value}"
            for field in FIELDS
            if field not in ("source",) and (value := getattr(record, field, None)) is not None
        ]
        if fields:
            head, _, rest = line.partition("\n")
            line = f"{head}  [{' '.join(fields)}]" + (f"\n{rest}" if rest else "")
        return redact(line)


def setup(level: str = "INFO", fmt: str = "auto") -> None:
    handler = logging.StreamHandler(sys.stderr)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would only repeat what feedhook says itself, and aiosqlite's
    # DEBUG lines are every SQL statement with its parameters (envelopes, cursors).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
    # asyncpg's pool logs each failed reconnect during a database outage as a traceback;
    # feedhook says once that the database is unreachable, and again when it answers.
    logging.getLogger("asyncpg.pool").setLevel(logging.ERROR)
