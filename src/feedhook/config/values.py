"""The value types of hooks.yaml: durations, URLs, rates, type globs, names, and the
defaults built from them. Each parses what a person writes and says what it expected."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    WithJsonSchema,
)

from feedhook.logs import redact_url

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """'250ms', '10s', '5m', '2h', '3d' (or a bare number of seconds) -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 10s, 5m or 250ms, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2) or "s"]
    else:
        raise ValueError(f"expected a duration like 10s, 5m or 250ms, got {value!r}")
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds as people read them in a log line or a table: '45s', '12m', '3.5h', '2.0d'."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _http_url(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"not an http(s) URL: {value!r}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {redact_url(value)!r}")
    return value


@dataclass(frozen=True)
class RateLimit:
    """At most `requests` requests in any window of `per` seconds."""

    requests: int
    per: float

    def __str__(self) -> str:
        return f"{self.requests}/{self.per:g}s"


def _rate_limit(value: object) -> RateLimit:
    if isinstance(value, RateLimit):
        return value
    if isinstance(value, str) and "/" in value:
        count, _, window = value.partition("/")
        if count.strip().isdigit() and int(count) > 0:
            return RateLimit(int(count), parse_duration(window))
    raise ValueError(f"expected a rate like 150/30s (requests/duration), got {value!r}")


_GLOB_CHARS = re.compile(r"^[A-Za-z0-9_.*?!\[\]-]+$")


def check_glob(pattern: str) -> str:
    """A type glob: fnmatch syntax over type names, brackets balanced."""
    if not pattern or not _GLOB_CHARS.match(pattern):
        raise ValueError(
            f"not a type glob: {pattern!r} (use letters, digits, '.', '_', '-' "
            "and the wildcards * ? [...], e.g. 'sequence.job.*')"
        )
    depth = 0
    for char in pattern:
        if char == "[":
            if depth:
                raise ValueError(f"not a type glob: {pattern!r} (nested '[')")
            depth = 1
        elif char == "]" and depth:
            depth = 0
    if depth:
        raise ValueError(f"not a type glob: {pattern!r} ('[' is never closed)")
    return pattern


# What editors are told of these (hooks.schema.json): the YAML's form, not the parsed one.
DURATION_SCHEMA = {
    "anyOf": [
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$|^\$\{"},
        {"type": "number", "minimum": 0},
    ],
    "description": "a duration: 250ms, 10s, 5m, 2h, 3d (or seconds)",
}
RATE_SCHEMA = {
    "type": "string",
    "pattern": r"^\s*\d+\s*/\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$|^\$\{",
    "description": "requests per window: 150/30s, 50/1s",
}

Duration = Annotated[
    float, BeforeValidator(parse_duration), WithJsonSchema(DURATION_SCHEMA, mode="validation")
]
HttpUrl = Annotated[str, BeforeValidator(_http_url)]
Rate = Annotated[
    RateLimit, BeforeValidator(_rate_limit), WithJsonSchema(RATE_SCHEMA, mode="validation")
]
Glob = Annotated[str, BeforeValidator(check_glob)]

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")

# Standard Webhooks' example schedule, after the first attempt.
DEFAULT_SCHEDULE: tuple[float, ...] = (
    5.0,
    300.0,
    1800.0,
    7200.0,
    18000.0,
    36000.0,
    50400.0,
    72000.0,
    86400.0,
)


def duration_or_forever(value: object) -> float | None:
    if value == "forever":
        return None
    try:
        return parse_duration(value)
    except ValueError:
        raise ValueError(f"expected a duration like 30d, or forever; got {value!r}") from None


def ed25519_key_bytes(key: str) -> bytes:
    """The 32-byte ed25519 seed inside a `whsk_<base64>` signing key (the seed alone, or
    seed and public key, 64 bytes, as some libraries write it). ValueError otherwise."""
    if not key.startswith("whsk_"):
        raise ValueError(
            "expected a Standard Webhooks signing key starting with 'whsk_'"
            " (feedhook keys generate makes one)"
        )
    try:
        raw = base64.b64decode(key.removeprefix("whsk_"), validate=True)
    except binascii.Error:
        raise ValueError("the part after 'whsk_' is not valid base64") from None
    if len(raw) not in (32, 64):
        raise ValueError(f"an ed25519 key is 32 (or 64) bytes, this one is {len(raw)}")
    return raw[:32]
