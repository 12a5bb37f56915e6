"""Modulo Risk Manager: the updates of workflow events, one feed per event code.

`GET {WSUrl}/api/events/<code>/updates?$filter=Date ge datetime'…'&$orderby=Date&page=N`
with OData paging. Dates arrive as `/Date(ms±hhmm)/`: UTC milliseconds and the zone the
server shows them in, which is also the zone it reads a `datetime'…'` literal in. So
feedhook learns the zone from the dates themselves and writes the literal exactly; until
it has seen one date, it starts 14 hours earlier (the widest zone on Earth).

Each fetch reads one page. A scan of a code keeps its filter fixed and walks its pages
(new updates land at the end, so pages never shift under it); the scan's place is in the
cursor, so a restart resumes it. Each scan starts `overlap` before the newest update
seen, and the ids of updates inside that window are kept: an update written late with
an older date is still caught, and a drained feed costs one request per code per poll.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from feedhook import clock
from feedhook.config import ModuloConfig, redact_url
from feedhook.envelope import Envelope
from feedhook.sources.base import (
    INVALID_UTF8,
    FeedError,
    Page,
    build_envelope,
    has_replacement,
    load_json,
    text_id,
    unidentified_id,
)
from feedhook.sources.http import HttpFeed, HttpStatusError

log = logging.getLogger("feedhook.source")

# The Action codes of the vendor page, as snake_case type suffixes.
ACTIONS: dict[int, str] = {
    0: "event_created",
    1: "event_closed",
    2: "event_reopened",
    3: "event_cancelled",
    4: "event_disassociated",
    5: "progress_updated",
    6: "child_event_created",
    7: "child_event_closed",
    8: "child_event_reopened",
    9: "child_event_cancelled",
    10: "child_event_deleted",
    11: "child_event_disassociated",
    12: "child_event_progress_updated",
    13: "property_updated",
    14: "involved_added",
    15: "involved_removed",
    16: "assets_associated",
    17: "assets_removed",
    18: "files_attached",
    19: "child_event_property_updated",
    20: "child_event_involved_added",
    21: "child_event_involved_removed",
    22: "child_event_assets_associated",
    23: "child_event_assets_removed",
    24: "child_event_files_attached",
    25: "parent_event_associated",
    26: "child_event_parent_associated",
    27: "business_components_associated",
    28: "business_components_disassociated",
    29: "child_event_business_components_associated",
    30: "child_event_business_components_disassociated",
    31: "continuity_plans_associated",
    32: "continuity_plans_disassociated",
    33: "enterprise_risks_associated",
    34: "enterprise_risks_disassociated",
    35: "attribute_files_attached",
    36: "attribute_files_removed",
    37: "events_associated",
    38: "events_disassociated",
    39: "child_event_attribute_files_attached",
    40: "child_event_attribute_files_removed",
    41: "attribute_file_updated",
    42: "child_event_attribute_file_updated",
}
# When Action is null, UpdateType still says what kind of change it was.
UPDATE_TYPES = {0: "property_updated", 1: "files_attached", 2: "progress_updated"}

_DATE = re.compile(r"^/Date\((-?\d+)([+-]\d{4})?\)/$")
TOKEN_EARLY_RENEWAL = 60.0  # seconds before expires_in that a token is replaced
WIDEST_ZONE_MS = 14 * 3600 * 1000  # UTC+14: how far a literal may be off before the zone is known


def parse_date(value: object) -> tuple[int, str]:
    """'/Date(1317053182737-0300)/' -> (epoch milliseconds, '-0300').

    The milliseconds are UTC; the offset says which zone the server displays in."""
    match = _DATE.match(str(value))
    if match is None:
        raise ValueError(f"not a /Date(ms±hhmm)/ value: {value!r}")
    return int(match.group(1)), match.group(2) or "+0000"


def zone_of(offset: str) -> timezone:
    """'-0300' -> its timezone; ValueError for an offset no zone has (+9999)."""
    sign = -1 if offset[0] == "-" else 1
    hours, minutes = int(offset[1:3]), int(offset[3:5])
    if minutes >= 60:
        raise ValueError(f"offset {offset} has {minutes} minutes")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))  # ValueError past 24h


def to_datetime(millis: int, offset: str) -> datetime:
    """The instant in the server's zone. ValueError or OverflowError when it has none."""
    return datetime.fromtimestamp(millis / 1000, tz=zone_of(offset))


def odata_literal(millis: int, offset: str) -> str:
    """A datetime'…' literal for an instant, written in the server's own zone (clamped
    to the years a literal can name)."""
    try:
        moment = to_datetime(millis, offset)
    except (ValueError, OverflowError, OSError):
        moment = datetime(1, 1, 2, tzinfo=zone_of(offset))
    return f"datetime'{moment.strftime('%Y-%m-%dT%H:%M:%S')}'"


def action_name(update: dict[str, Any]) -> str:
    action = update.get("Action")
    if action is None:
        return UPDATE_TYPES.get(update.get("UpdateType", -1), "updated")
    return ACTIONS.get(int(action), f"action_{int(action)}")


def read_date(update: dict[str, Any]) -> tuple[int | None, str | None, list[str]]:
    """An update's milliseconds and zone offset, each None when unusable, and the problems."""
    try:
        millis, offset = parse_date(update.get("Date"))
    except ValueError as exc:
        return None, None, [str(exc)]
    try:
        zone_of(offset)
    except ValueError:
        return millis, None, [f"Date has an impossible zone offset {offset}"]
    try:
        to_datetime(millis, offset)
    except (ValueError, OverflowError, OSError):
        return millis, offset, [f"Date {millis} ms is out of range (no year 1 to 9999)"]
    return millis, offset, []


def normalize(
    source_name: str,
    ws_url: str,
    event_code: str,
    update: dict[str, Any],
    known_problems: Sequence[str] = (),
) -> Envelope:
    update_id = text_id(update.get("Id"))
    millis, offset, problems = read_date(update)
    problems = [*known_problems, *problems]
    if update_id is None:
        problems.append(f"Id is not a string: {update.get('Id')!r}")
    try:
        action: str | None = action_name(update)
    except (TypeError, ValueError):
        action = None
        problems.append(f"Action is not a number: {update.get('Action')!r}")
    child = update.get("ChildEventCode") or None
    fields = {
        "event_code": event_code,
        "child_event_code": child,
        "update_id": update_id,
        "action": update.get("Action"),
        "property": update.get("Property"),
        "old_value": update.get("OldValue"),
        "new_value": update.get("NewValue"),
        "updated_by": update.get("UpdatedBy"),
        "update_type": update.get("UpdateType"),
        "comment": update.get("Comment"),
        "additional_parameter": update.get("AdditionalParameter"),
    }
    moment = None
    if millis is not None:
        with contextlib.suppress(ValueError, OverflowError, OSError):
            moment = to_datetime(millis, offset or "+0000")
    return build_envelope(
        source_name=source_name,
        system="modulo",
        source_url=ws_url,
        upstream_id=update_id or unidentified_id(update),
        resource="event",
        operation=action,
        time=moment,
        subject=child or event_code,
        fields=fields,
        native=update,
        problems=problems,
    )


@dataclass
class CodeCursor:
    """One event code: the newest update instant seen, the ids of the updates within
    `window` ms of it (the overlap), the server's zone once learned, and the scan under
    way: its filter instant (None: no filter, reading from the very beginning) and its
    next page; page 1 with no filter instant means no scan is under way."""

    millis: int
    ids: dict[str, int] = field(default_factory=dict)
    offset: str | None = None
    scan_from: int | None = None
    scan_page: int = 1

    def knows(self, millis: int, update_id: str, window: int) -> bool:
        return update_id in self.ids or millis < self.millis - window

    def advance(self, millis: int, update_id: str, window: int) -> None:
        self.ids[update_id] = millis
        if millis > self.millis:
            self.millis = millis
            cutoff = millis - window
            self.ids = {k: v for k, v in self.ids.items() if v >= cutoff}


def load_cursor(text: str) -> dict[str, CodeCursor | None]:
    """Per event code: a cursor, or None for "from the beginning"."""
    try:
        raw = orjson.loads(text)
        codes: dict[str, CodeCursor | None] = {}
        for code, state in raw["codes"].items():
            if state is None:
                codes[code] = None
                continue
            ids = state["ids"]
            offset = state.get("offset")
            if isinstance(ids, list):  # written by an older feedhook: ids at the newest instant
                ids = dict.fromkeys(ids, int(state["millis"]))
                offset = None  # its zone was never known for sure
            codes[code] = CodeCursor(
                int(state["millis"]),
                {str(k): int(v) for k, v in ids.items()},
                offset,
                state.get("scan_from"),
                int(state.get("scan_page", 1)),
            )
        return codes
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FeedError(f"the stored Modulo cursor is unreadable ({exc!r}): {text[:200]}") from None


def dump_cursor(codes: dict[str, CodeCursor | None]) -> str:
    out: dict[str, Any] = {}
    for code, state in sorted(codes.items()):
        if state is None:
            out[code] = None
            continue
        entry: dict[str, Any] = {"millis": state.millis, "ids": state.ids, "offset": state.offset}
        if state.scan_from is not None or state.scan_page > 1:
            entry |= {"scan_from": state.scan_from, "scan_page": state.scan_page}
        out[code] = entry
    return json.dumps({"codes": out}, separators=(",", ":"), sort_keys=True)


class ModuloFeed(HttpFeed):
    config: ModuloConfig

    def __init__(self, name: str, config: ModuloConfig) -> None:
        super().__init__(name, config)
        self.credential_keys = "token" if config.token else "client_id and client_secret"
        self.ws_url = config.url.rstrip("/")
        self._token: str | None = (
            config.token.get_secret_value() if config.token is not None else None
        )
        self._token_expires = float("inf")
        self._round: deque[str] = deque()

    # --- auth ------------------------------------------------------------------------

    async def _bearer(self) -> str:
        if self._token is None or clock.now() >= self._token_expires:
            await self._renew_token()
        assert self._token is not None
        return self._token

    async def _renew_token(self) -> None:
        config = self.config
        if config.token_url is None:
            raise FeedError(
                f"{self.name}: the static token was rejected (HTTP 401); "
                "put a valid token in the config"
            )
        assert config.client_id is not None and config.client_secret is not None
        response = await self.client.request(
            "POST",
            config.token_url,
            headers={"Accept": "application/json"},
            form={
                "grant_type": "client_credentials",
                "client_id": config.client_id,
                "client_secret": config.client_secret.get_secret_value(),
            },
        )
        try:
            document = orjson.loads(response.body)
            token = str(document["access_token"])
            lifetime = float(document.get("expires_in", 86400))
        except (ValueError, KeyError, TypeError):
            raise FeedError(
                f"{redact_url(config.token_url)}: the token endpoint did not answer "
                "{access_token, expires_in}"
            ) from None
        self._token = token
        self._token_expires = clock.now() + max(
            lifetime - min(TOKEN_EARLY_RENEWAL, lifetime / 10), 0.0
        )
        log.info(
            "%s: new access token, valid %.0fs", self.name, lifetime, extra={"source": self.name}
        )

    async def _get_updates(self, url: str, params: dict[str, str]) -> tuple[list[Any], bool]:
        """A page of updates, and whether bytes that were not UTF-8 had to be replaced."""
        for attempt in range(2):
            headers = {"Authorization": f"Bearer {await self._bearer()}"}
            try:
                response = await self.client.get(url, params, "application/json", headers)
                break
            except HttpStatusError as exc:
                if exc.status != 401 or attempt:
                    raise
                # Expired or revoked early: one fresh token, then the same request again.
                self._token_expires = 0.0
                if self.config.token_url is None:
                    raise
        where = redact_url(response.url)
        if response.status == 204 or not response.body.strip():
            return [], False
        if "html" in response.content_type:
            raise FeedError(
                f"{where}: answered HTML instead of JSON; check the url of this source",
                cause="html",
            )
        updates, replaced = load_json(response.body, where)
        if not isinstance(updates, list):
            raise FeedError(f"{where}: expected a JSON list of event updates")
        return updates, replaced

    # --- the feed --------------------------------------------------------------------

    async def initial_cursor(self) -> str:
        return dump_cursor({code: self._start_for_code() for code in self.config.event_codes})

    def _start_for_code(self) -> CodeCursor | None:
        if self.config.start == "earliest":
            return None
        return CodeCursor(int(clock.now() * 1000))

    async def fetch(self, cursor_text: str) -> Page:
        """One page of the next event code in this round; `more` until the round ends."""
        codes = load_cursor(cursor_text)
        for code in self.config.event_codes:
            if code not in codes:  # a code added to the config since the cursor was stored
                codes[code] = self._start_for_code()
        if not self._round:
            self._round.extend(self.config.event_codes)
        code = self._round[0]
        state = codes[code]
        window = int(self.config.overlap * 1000)
        if state is not None and state.scan_from is None and state.scan_page == 1:
            # A new scan: from the window before the newest update seen.
            state.scan_from = state.millis - window
            if state.offset is None:
                state.scan_from -= WIDEST_ZONE_MS
        # No filter while reading a code from its very beginning (start: earliest).
        scan_from = state.scan_from if state is not None else None
        page_number = state.scan_page if state is not None else 1
        batch, replaced = await self._read_page(
            code, scan_from, state.offset if state else None, page_number
        )
        events = []
        for update in batch:
            if not isinstance(update, dict):
                events.append(self._not_an_object(code, update))
                continue
            millis, offset, _ = read_date(update)
            update_id = text_id(update.get("Id"))
            if state is not None and offset is not None:
                state.offset = offset  # the zone the server shows, and reads, dates in
            if millis is not None and update_id is not None:
                if state is not None and state.knows(millis, update_id, window):
                    continue
                if state is None:
                    state = CodeCursor(millis, offset=offset)
                state.advance(millis, update_id, window)
            utf8 = [INVALID_UTF8] if replaced and has_replacement(update) else []
            events.append(normalize(self.name, self.ws_url, code, update, utf8))
        full = len(batch) >= self.config.page_size
        if state is not None:
            if full:
                state.scan_from, state.scan_page = scan_from, page_number + 1
            else:  # the scan is over: the next one starts from the newest update seen
                state.scan_from, state.scan_page = None, 1
        codes[code] = state
        if not full:
            self._round.popleft()  # only once the code was read to its end
        return Page(
            events=[(e.upstream_id, e) for e in events],
            cursor=dump_cursor(codes),
            more=full or bool(self._round),
        )

    def _not_an_object(self, code: str, native: Any) -> Envelope:
        return build_envelope(
            source_name=self.name,
            system="modulo",
            source_url=self.ws_url,
            upstream_id=unidentified_id(native),
            resource="event",
            operation=None,
            time=None,
            subject=code,
            fields={"event_code": code},
            native=native,
            problems=["the update is not a JSON object"],
        )

    async def _read_page(
        self, code: str, scan_from: int | None, offset: str | None, page: int
    ) -> tuple[list[Any], bool]:
        url = f"{self.ws_url}/api/events/{code}/updates"
        params = {
            "$orderby": "Date",
            "page_size": str(self.config.page_size),
            "page": str(page),
        }
        if scan_from is not None:
            params["$filter"] = f"Date ge {odata_literal(scan_from, offset or '+0000')}"
        if self.config.include_child_events:
            params["show_child_events"] = "True"
        return await self._get_updates(url, params)
