"""Modulo Risk Manager: the updates of workflow events, one feed per event code.

`GET {WSUrl}/api/events/<code>/updates?$filter=Date ge datetime'…'&$orderby=Date&page=N`
with OData paging. Dates arrive as `/Date(ms±hhmm)/`. The page does not say in which time
zone the server reads a `datetime'…'` literal, so each request starts `overlap` before the
cursor and drops what it already has: re-reading is cheap, skipping is a lost event.
"""

from __future__ import annotations

import json
import logging
import re
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from feedhook import clock
from feedhook.config import ModuloSource as ModuloConfig
from feedhook.config import redact_url
from feedhook.envelope import Envelope, make_envelope
from feedhook.sources.base import FeedError, Page
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


def parse_date(value: object) -> tuple[int, str]:
    """'/Date(1317053182737-0300)/' -> (epoch milliseconds, '-0300').

    The milliseconds are UTC; the offset says which zone the server displays in.
    """
    match = _DATE.match(str(value))
    if match is None:
        raise ValueError(f"not a /Date(ms±hhmm)/ value: {value!r}")
    return int(match.group(1)), match.group(2) or "+0000"


def to_datetime(millis: int, offset: str) -> datetime:
    sign = -1 if offset[0] == "-" else 1
    zone = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
    return datetime.fromtimestamp(millis / 1000, tz=zone)


def odata_literal(millis: int, offset: str) -> str:
    """A datetime'…' literal for an instant, written in the server's own zone."""
    return f"datetime'{to_datetime(millis, offset).strftime('%Y-%m-%dT%H:%M:%S')}'"


def action_name(update: dict[str, Any]) -> str:
    action = update.get("Action")
    if action is None:
        return UPDATE_TYPES.get(update.get("UpdateType", -1), "updated")
    return ACTIONS.get(int(action), f"action_{int(action)}")


def normalize(source_name: str, ws_url: str, event_code: str, update: dict[str, Any]) -> Envelope:
    where = f"{source_name}: update of {event_code}"
    try:
        update_id = str(update["Id"])
        millis, offset = parse_date(update["Date"])
        action = action_name(update)
    except (KeyError, ValueError, TypeError) as exc:
        raise FeedError(f"{where}: malformed update ({exc}): {str(update)[:200]}") from None
    child = update.get("ChildEventCode") or None
    return make_envelope(
        source_name=source_name,
        upstream_id=update_id,
        source=ws_url,
        type=f"modulo.event.{action}",
        time=to_datetime(millis, offset),
        subject=child or event_code,
        data={
            "system": "modulo",
            "resource_type": "event",
            "operation": action,
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
            "native": update,
        },
    )


@dataclass
class CodeCursor:
    """Newest update instant seen for one event code, the ids at it, the server's zone."""

    millis: int
    ids: set[str] = field(default_factory=set)
    offset: str = "+0000"

    def knows(self, millis: int, update_id: str) -> bool:
        return millis < self.millis or (millis == self.millis and update_id in self.ids)

    def advance(self, millis: int, update_id: str, offset: str) -> None:
        self.offset = offset
        if millis > self.millis:
            self.millis, self.ids = millis, {update_id}
        elif millis == self.millis:
            self.ids.add(update_id)


def load_cursor(text: str) -> dict[str, CodeCursor | None]:
    """Per event code: a cursor, or None for "from the beginning"."""
    try:
        raw = orjson.loads(text)
        return {
            code: None
            if state is None
            else CodeCursor(int(state["millis"]), set(state["ids"]), str(state["offset"]))
            for code, state in raw["codes"].items()
        }
    except (ValueError, KeyError, TypeError) as exc:
        raise FeedError(f"the stored Modulo cursor is unreadable ({exc!r}): {text[:200]}") from None


def dump_cursor(codes: dict[str, CodeCursor | None]) -> str:
    return json.dumps(
        {
            "codes": {
                code: None
                if state is None
                else {"millis": state.millis, "ids": sorted(state.ids), "offset": state.offset}
                for code, state in sorted(codes.items())
            }
        },
        separators=(",", ":"),
    )


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

    async def _get_updates(self, url: str, params: dict[str, str]) -> list[dict[str, Any]]:
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
            return []
        if "html" in response.content_type:
            raise FeedError(
                f"{where}: answered HTML instead of JSON; check the url of this source",
                cause="html",
            )
        try:
            updates = orjson.loads(response.body)
        except (UnicodeDecodeError, orjson.JSONDecodeError) as exc:
            raise FeedError(
                f"{where}: the JSON is invalid or truncated ({exc})", cause="invalid_json"
            ) from None
        if not isinstance(updates, list) or not all(isinstance(u, dict) for u in updates):
            raise FeedError(f"{where}: expected a JSON list of event updates")
        return updates

    # --- the feed --------------------------------------------------------------------

    async def initial_cursor(self) -> str:
        return dump_cursor({code: self._start_for_code() for code in self.config.event_codes})

    def _start_for_code(self) -> CodeCursor | None:
        if self.config.start == "earliest":
            return None
        return CodeCursor(int(clock.now() * 1000))

    async def fetch(self, cursor_text: str) -> Page:
        """All new updates of the next event code in this round; `more` until the round ends."""
        codes = load_cursor(cursor_text)
        for code in self.config.event_codes:
            if code not in codes:  # a code added to the config since the cursor was stored
                codes[code] = self._start_for_code()
        if not self._round:
            self._round.extend(self.config.event_codes)
        code = self._round[0]
        state = codes[code]
        events = []
        for update in await self._read_since(code, state):
            try:
                millis, offset = parse_date(update["Date"])
                update_id = str(update["Id"])
            except (KeyError, ValueError) as exc:
                raise FeedError(f"{self.name}: malformed update of {code} ({exc})") from None
            if state is not None and state.knows(millis, update_id):
                continue
            events.append((update_id, normalize(self.name, self.ws_url, code, update)))
            if state is None:
                state = CodeCursor(millis, {update_id}, offset)
            else:
                state.advance(millis, update_id, offset)
        codes[code] = state
        self._round.popleft()  # only once the code was read in full
        return Page(events=events, cursor=dump_cursor(codes), more=bool(self._round))

    async def _read_since(self, code: str, state: CodeCursor | None) -> list[dict[str, Any]]:
        url = f"{self.ws_url}/api/events/{code}/updates"
        params = {"$orderby": "Date", "page_size": str(self.config.page_size)}
        if state is not None:
            since = state.millis - int(self.config.overlap * 1000)
            params["$filter"] = f"Date ge {odata_literal(since, state.offset)}"
        if self.config.include_child_events:
            params["show_child_events"] = "True"
        updates: list[dict[str, Any]] = []
        page = 1
        while True:
            batch = await self._get_updates(url, {**params, "page": str(page)})
            updates.extend(batch)
            if len(batch) < self.config.page_size:
                return updates
            page += 1
