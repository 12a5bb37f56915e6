"""Logging: readable text on a terminal, JSON lines elsewhere (containers, files)."""

from __future__ import annotations

import json
import logging
import sys
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
        return json.dumps(line, ensure_ascii=False)


def setup(level: str = "INFO", fmt: str = "auto") -> None:
    handler = logging.StreamHandler(sys.stderr)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler.setFormatter(
        JsonFormatter()
        if use_json
        else logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log and backoff's own messages would only repeat ours.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
