"""Logging: readable text on a terminal, JSON lines elsewhere (containers, files).

Every configured secret is masked in every line, whatever produced it: a last line of
defence behind code that never logs secrets in the first place.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime

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
        # Longest first, so a secret containing another is masked whole.
        self.secrets = tuple(sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


redact = Redactor()


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
        return redact(json.dumps(line, ensure_ascii=False))


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
    # aiohttp's access log would only repeat what feedhook says itself.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
