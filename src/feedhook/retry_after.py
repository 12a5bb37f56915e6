"""Retry-After, as both a feed (429, 503) and a subscriber may send it."""

from __future__ import annotations

import email.utils


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as delta-seconds or an HTTP date -> seconds from now."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - now)
