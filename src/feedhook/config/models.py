"""The models of hooks.yaml: typed, frozen, named `*Config`. `SourceConfig` is the table
of source kinds."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, get_args
from urllib.parse import urlsplit

import jmespath
import jmespath.exceptions
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from feedhook.config.values import (
    DEFAULT_SCHEDULE,
    DURATION_SCHEMA,
    Duration,
    Glob,
    HttpUrl,
    Rate,
    RateLimit,
    duration_or_forever,
    ed25519_key_bytes,
)
from feedhook.logs import redact_url, url_secrets

# Subscription headers whose values are credentials by their name: masked everywhere.
SENSITIVE_HEADER = re.compile(r"auth|token|key|secret|password|cookie", re.I)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


# --- sources -------------------------------------------------------------------------


class SourceSettings(_Model):
    """What every source kind has. Each kind's model also names the feed that reads it
    (`module:Class`, imported only where feeds run) and describes itself for `check`."""

    feed: ClassVar[str]

    url: HttpUrl
    poll_interval: Duration = 10.0
    timeout: Duration = 30.0
    max_backoff: Duration = 300.0
    rate_limit: Rate = RateLimit(150, 30.0)
    start: str = "latest"

    def describe(self) -> str:
        """One line for `feedhook check`: what is read, from where, how often (no secrets)."""
        kind = getattr(self, "kind", "?")
        return (
            f"{kind} at {redact_url(self.url)}{self._details()}, every {self.poll_interval:g}s,"
            f" start {self.start}, rate limit {self.rate_limit}{self._filters()}"
        )

    def _details(self) -> str:
        return ""

    def _filters(self) -> str:
        return ""


class _LatestOrEarliest(SourceSettings):
    @field_validator("start")
    @classmethod
    def _start(cls, value: str) -> str:
        if value in ("latest", "earliest"):
            return value
        raise ValueError(f"expected latest or earliest, got {value!r}")


class EnrichConfig(_Model):
    """Fetch the resource an event is about (its `subject` link) and say what changed."""

    # Upstream event types (job_updated, ...) whose subject is fetched; fnmatch globs.
    types: tuple[Glob, ...] = Field(min_length=1)
    # Keep each subject's last representation and put the difference in `data.diff`.
    diff: bool = True
    # How long a subject that cannot be fetched may hold its event (and those after it).
    max_wait: Duration = 300.0

    def describe(self, rate_limit: RateLimit) -> str:
        """For `feedhook check`: what is fetched and what it costs."""
        return (
            f"enriches {', '.join(self.types)}{' with diffs' if self.diff else ''}: one"
            f" request per distinct subject per batch of pages, within the same {rate_limit}"
            f" budget as the feed (up to 50 more per page of 50 events); an unreachable"
            f" subject holds its page up to {self.max_wait:g}s"
        )


class _BebanjoConfig(SourceSettings):
    username: str = Field(min_length=1)
    password: SecretStr
    events_url: HttpUrl | None = None
    event_types: tuple[str, ...] = ()
    enrich: EnrichConfig | None = None

    @field_validator("username")
    @classmethod
    def _no_colon(cls, value: str) -> str:
        if ":" in value:
            raise ValueError("a Digest username cannot contain ':'")
        return value

    @field_validator("start")
    @classmethod
    def _start(cls, value: str) -> str:
        if value in ("latest", "earliest") or value.isdigit():
            return value
        raise ValueError(f"expected latest, earliest or an event id, got {value!r}")

    feed = "feedhook.sources.bebanjo:BebanjoFeed"

    def _details(self) -> str:
        return f" ({getattr(self, 'format', '?')})"

    def _filters(self) -> str:
        return f", event types {', '.join(self.event_types)}" if self.event_types else ""

    @field_validator("event_types")
    @classmethod
    def _event_types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not re.fullmatch(r"[a-z][a-z0-9_]*_(created|updated|deleted)", name):
                raise ValueError(
                    f"not a BeBanjo event type: {name!r} (expected <resource>_created, "
                    "<resource>_updated or <resource>_deleted, e.g. job_created)"
                )
        return value


class SequenceConfig(_BebanjoConfig):
    kind: Literal["sequence"]
    format: Literal["json", "xml"] = "json"


class MovidaConfig(_BebanjoConfig):
    kind: Literal["movida"]
    format: Literal["xml"] = "xml"


class TeamHubConfig(_LatestOrEarliest):
    """Helix TeamHub's company event feed (newest first, offset paging, header auth)."""

    kind: Literal["teamhub"]
    feed = "feedhook.sources.teamhub:TeamHubFeed"
    company_key: SecretStr
    account_key: SecretStr
    project: str | None = None
    operation: str | None = None
    target: str | None = None
    # At least 2: a walk's pages overlap to notice offsets shifting (sources/teamhub.py).
    page_size: int = Field(default=100, ge=2, le=1000)
    live_events: Literal["on_complete", "each_update"] = "on_complete"
    live_timeout: Duration = 3600.0
    # How far below the newest event each scan reaches, ids kept: an event that shows up
    # late with an earlier timestamp (a back-dated build, clock skew) is delivered once.
    overlap: Duration = 300.0

    def _filters(self) -> str:
        filters = [
            f"{k}={v}"
            for k in ("project", "operation", "target")
            if (v := getattr(self, k)) is not None
        ]
        only = f", only {' '.join(filters)}" if filters else ""
        return f", live events {self.live_events}{only}"


class ModuloConfig(_LatestOrEarliest):
    """Modulo Risk Manager workflow event updates, one feed per event code."""

    kind: Literal["modulo"]
    event_codes: tuple[str, ...]
    include_child_events: bool = False
    token: SecretStr | None = None
    token_url: HttpUrl | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    page_size: int = Field(default=1000, ge=1, le=1000)
    # How far before the newest update seen each scan starts, and how long the ids in that
    # window are kept: an update saved late with an earlier date (clock skew, a slow
    # commit) is still delivered, once.
    overlap: Duration = 300.0

    feed = "feedhook.sources.modulo:ModuloFeed"

    def _details(self) -> str:
        auth = (
            "static token"
            if self.token is not None
            else f"OAuth2 via {redact_url(self.token_url or '')}"
        )
        children = " (with child events)" if self.include_child_events else ""
        return f", event codes {', '.join(self.event_codes)}{children}, {auth}"

    @field_validator("event_codes")
    @classmethod
    def _codes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("list at least one event code, e.g. [EVTC201105000052]")
        for code in value:
            if not re.fullmatch(r"[A-Za-z0-9_-]+", code):
                raise ValueError(f"not an event code: {code!r} (letters, digits, '-' and '_')")
        return value

    @model_validator(mode="after")
    def _one_auth(self) -> ModuloConfig:
        oauth = (self.token_url, self.client_id, self.client_secret)
        if self.token is not None and any(v is not None for v in oauth):
            raise ValueError("give either token, or token_url + client_id + client_secret")
        if self.token is None and not all(v is not None for v in oauth):
            missing = [
                k
                for k, v in zip(("token_url", "client_id", "client_secret"), oauth, strict=True)
                if v is None
            ]
            raise ValueError(
                "needs auth: a static token, or token_url + client_id + client_secret "
                f"(missing {', '.join(missing)})"
            )
        return self


# The table of source kinds: one model per kind (its `kind` literal names it, its `feed`
# says which module reads it). A new kind is a model here, a feed module in sources/, its
# simulated upstream in sim/, and one more member of this union; the rest is derived.
SourceConfig = Annotated[
    SequenceConfig | MovidaConfig | TeamHubConfig | ModuloConfig, Field(discriminator="kind")
]
SOURCE_MODELS: tuple[type[SourceSettings], ...] = get_args(get_args(SourceConfig)[0])
SOURCE_KINDS: tuple[str, ...] = tuple(
    get_args(model.model_fields["kind"].annotation)[0] for model in SOURCE_MODELS
)


# --- subscriptions -------------------------------------------------------------------


class RetryConfig(_Model):
    schedule: tuple[Duration, ...] = DEFAULT_SCHEDULE
    max_age: Duration | None = None


class CircuitBreakerConfig(_Model):
    """After `failures` consecutive retryable failures nothing is sent to the receiver
    but one probe every `cooldown` (doubled after each failed probe, up to 10m)."""

    failures: int = Field(default=10, ge=0)  # 0: no circuit breaker
    cooldown: Duration = Field(default=30.0, gt=0)


def _whsec(value: SecretStr) -> SecretStr:
    raw = value.get_secret_value()
    if not raw.startswith("whsec_"):
        raise ValueError("expected a Standard Webhooks secret starting with 'whsec_'")
    try:
        key = base64.b64decode(raw[len("whsec_") :], validate=True)
    except binascii.Error:
        raise ValueError("the part after 'whsec_' is not valid base64") from None
    if len(key) < 16:
        raise ValueError("the secret is too short: use at least 16 random bytes (24+ base64)")
    return value


class SubscriptionConfig(_Model):
    url: HttpUrl
    types: tuple[Glob, ...]
    sources: tuple[str, ...] | None = None
    filter: str | None = None
    secret: SecretStr | None = None
    previous_secrets: tuple[SecretStr, ...] = ()
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: Duration = 15.0
    max_in_flight: int = Field(default=10, ge=1, le=1000)
    retry: RetryConfig = RetryConfig()
    # ed25519 (`whsk_...`): Standard Webhooks v1a signatures, beside or instead of `secret`.
    signing_key: SecretStr | None = None
    # At most this many deliveries started in any window (none: no limit).
    rate_limit: Rate | None = None
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    # subject: one delivery at a time per envelope subject, in ingest order.
    ordering: Literal["none", "subject"] = "none"
    # cloudevents: ask the receiver's permission first (the CloudEvents webhook
    # validation handshake) and take the rate it allows.
    handshake: Literal["none", "cloudevents"] = "none"

    def limits(self) -> str:
        """For `feedhook check`: how this receiver is spared."""
        rate = f"rate limit {self.rate_limit}" if self.rate_limit else "no rate limit"
        breaker = self.circuit_breaker
        circuit = (
            f"circuit opens after {breaker.failures} failures in a row, probe every"
            f" {breaker.cooldown:g}s"
            if breaker.failures
            else "no circuit breaker"
        )
        out = f"{self.max_in_flight} in flight; {rate}; {circuit}"
        if self.ordering == "subject":
            out += "; in order per subject"
        if self.handshake == "cloudevents":
            out += "; CloudEvents handshake first"
        return out

    @field_validator("types")
    @classmethod
    def _some_types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("list at least one type glob, e.g. ['sequence.job.*'] or ['*']")
        return value

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else _whsec(value)

    @field_validator("signing_key")
    @classmethod
    def _signing_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            ed25519_key_bytes(value.get_secret_value())
        return value

    @field_validator("previous_secrets")
    @classmethod
    def _previous(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        return tuple(_whsec(v) for v in value)

    @field_validator("filter")
    @classmethod
    def _filter(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                jmespath.compile(value)
            except jmespath.exceptions.JMESPathError as exc:
                first = (
                    str(exc)
                    .splitlines()[0]
                    .removeprefix("Invalid jmespath expression: ")
                    .rstrip(":")
                )
                where = getattr(exc, "lex_position", None)
                at = f" at column {where}" if where is not None else ""
                raise ValueError(f"not a valid JMESPath expression{at}: {first}") from None
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        reserved = {"content-type", "content-length", "host", "user-agent", "transfer-encoding"}
        for name, text in value.items():
            lowered = name.lower()
            if lowered in reserved or lowered.startswith("webhook-"):
                raise ValueError(f"header {name!r} is set by feedhook and cannot be overridden")
            if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", name):
                raise ValueError(f"not a valid HTTP header name: {name!r}")
            if any(c in text for c in "\r\n\0"):
                raise ValueError(
                    f"header {name!r}: the value holds a line break (or NUL), which no"
                    " HTTP request can carry; write it on one line"
                )
        return value

    @model_validator(mode="after")
    def _previous_needs_secret(self) -> SubscriptionConfig:
        if self.previous_secrets and self.secret is None:
            raise ValueError("previous_secrets needs a current secret")
        parts = urlsplit(self.url)
        if (parts.username or parts.password) and any(
            name.lower() == "authorization" for name in self.headers
        ):
            raise ValueError(
                "credentials in the url and an Authorization header: the request can carry"
                " only one; keep the header and take user:password@ out of the url"
            )
        return self


class RetentionConfig(_Model):
    """How long finished work is kept. Pruning never touches a delivery that is pending,
    in flight or dead-lettered (until `dead_letters`), nor an event one of them needs."""

    # Delivered deliveries, and events none of whose deliveries is pending or dead.
    delivered: Duration = 7 * 86400.0
    # Dead letters (and their deliveries); None: forever.
    dead_letters: Annotated[
        float | None,
        BeforeValidator(duration_or_forever),
        WithJsonSchema({"anyOf": [DURATION_SCHEMA, {"const": "forever"}]}, mode="validation"),
    ] = 30 * 86400.0
    # How often `feedhook run` prunes.
    interval: Duration = 600.0


class Config(_Model):
    sources: dict[str, SourceConfig]
    subscriptions: dict[str, SubscriptionConfig] = Field(default_factory=dict)
    retention: RetentionConfig = RetentionConfig()

    def secret_values(self) -> set[str]:
        """Every secret in the config (passwords, keys, tokens, webhook secrets and the
        password part of any URL), so logs can mask them whatever happens."""
        found: set[str] = set()

        def walk(value: object) -> None:
            if isinstance(value, SecretStr):
                found.add(value.get_secret_value())
                for prefix in ("whsec_", "whsk_"):
                    if value.get_secret_value().startswith(prefix):
                        found.add(value.get_secret_value().removeprefix(prefix))
            elif isinstance(value, BaseModel):
                for name in type(value).model_fields:
                    walk(getattr(value, name))
                if isinstance(value, SubscriptionConfig):
                    found.update(v for k, v in value.headers.items() if SENSITIVE_HEADER.search(k))
            elif isinstance(value, dict):
                for item in value.values():
                    walk(item)
            elif isinstance(value, tuple | list):
                for item in value:
                    walk(item)
            elif isinstance(value, str) and "://" in value:
                found.update(url_secrets(value))

        walk(self)
        return found


@dataclass(frozen=True)
class ConfigChanges:
    """What a reload changes: names of subscriptions and sources added, removed or
    changed. The one place where two configs are compared."""

    subscriptions_added: tuple[str, ...] = ()
    subscriptions_removed: tuple[str, ...] = ()
    subscriptions_changed: tuple[str, ...] = ()
    sources_added: tuple[str, ...] = ()
    sources_removed: tuple[str, ...] = ()
    sources_changed: tuple[str, ...] = ()

    @classmethod
    def between(cls, old: Config, new: Config) -> ConfigChanges:
        def diff(a: Mapping[str, object], b: Mapping[str, object]) -> tuple[tuple[str, ...], ...]:
            return (
                tuple(sorted(set(b) - set(a))),
                tuple(sorted(set(a) - set(b))),
                tuple(sorted(n for n in set(a) & set(b) if a[n] != b[n])),
            )

        subs, sources = diff(old.subscriptions, new.subscriptions), diff(old.sources, new.sources)
        return cls(*subs, *sources)

    def lines(self) -> list[str]:
        """`sources_changed: seq, mov` for each non-empty change."""
        return [f"{k}: {', '.join(v)}" for k, v in vars(self).items() if v]


def config_schema() -> dict[str, Any]:
    """The JSON Schema of hooks.yaml, as editors use it (`feedhook schema`)."""
    schema = Config.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "title": "feedhook hooks.yaml",
    }
