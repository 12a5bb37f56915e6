"""hooks.yaml -> typed, frozen models.

Every problem in a file is collected and reported at once, each naming the file, the key
path and what was expected, so a person can fix the whole file in one pass.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
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
    ValidationError,
    field_validator,
    model_validator,
)

from feedhook import yamldoc

# --- value types ---------------------------------------------------------------------

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


def _http_url(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"not an http(s) URL: {value!r}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {redact_url(value)!r}")
    return value


# Query parameters whose values are credentials by their name.
SENSITIVE_PARAM = re.compile(r"key|token|secret|pass|auth|sig|code|credential|session", re.I)


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


Duration = Annotated[float, BeforeValidator(parse_duration)]
HttpUrl = Annotated[str, BeforeValidator(_http_url)]
Rate = Annotated[RateLimit, BeforeValidator(_rate_limit)]
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


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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


class _BebanjoConfig(SourceSettings):
    username: str = Field(min_length=1)
    password: SecretStr
    events_url: HttpUrl | None = None
    event_types: tuple[str, ...] = ()

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
    page_size: int = Field(default=100, ge=1, le=1000)
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


def _duration_or_forever(value: object) -> float | None:
    if value == "forever":
        return None
    try:
        return parse_duration(value)
    except ValueError:
        raise ValueError(f"expected a duration like 30d, or forever; got {value!r}") from None


class RetentionConfig(_Model):
    """How long finished work is kept. Pruning never touches a delivery that is pending,
    in flight or dead-lettered (until `dead_letters`), nor an event one of them needs."""

    # Delivered deliveries, and events none of whose deliveries is pending or dead.
    delivered: Duration = 7 * 86400.0
    # Dead letters (and their deliveries); None: forever.
    dead_letters: Annotated[float | None, BeforeValidator(_duration_or_forever)] = 30 * 86400.0
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
                if value.get_secret_value().startswith("whsec_"):
                    found.add(value.get_secret_value().removeprefix("whsec_"))
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


# --- loading -------------------------------------------------------------------------


class ConfigError(Exception):
    """A config file that cannot be used; `errors` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


SECRET_KEYS = frozenset(
    {
        "password",
        "secret",
        "previous_secrets",
        "token",
        "client_secret",
        "account_key",
        "company_key",
    }
)

SENSITIVE_HEADER = re.compile(r"auth|token|key|secret|password|cookie", re.I)

At = Callable[[str], str]  # a key path -> "file:line:column" for error lines

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(
    node: Any, path: str, env: Mapping[str, str], errors: list[str], unset: set[str], at: At
) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string; $$ is a literal $."""
    if isinstance(node, dict):
        return {
            k: _expand(v, f"{path}.{k}" if path else str(k), env, errors, unset, at)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_expand(v, f"{path}[{i}]", env, errors, unset, at) for i, v in enumerate(node)]
    if not isinstance(node, str) or "$" not in node:
        return node

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        unset.add(path)
        errors.append(
            f"{at(path)}: {path}: environment variable {name} is not set "
            f"(set it, or write ${{{name}:-default}})"
        )
        return ""

    return _VAR.sub(substitute, node)


def _key_path(loc: tuple[int | str, ...]) -> str:
    parts = list(loc)
    # A discriminated union adds the kind as a step; the user never wrote it.
    if len(parts) >= 3 and parts[0] == "sources" and parts[2] in SOURCE_KINDS:
        del parts[2]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _describe(error: Any) -> str:
    kind = error["type"]
    msg = str(error["msg"])
    loc = error["loc"]
    # A header's value may be a credential whatever its name: never echoed.
    secret = any(str(part) in SECRET_KEYS or part == "headers" for part in loc)
    shown = "" if secret else f", got {error.get('input')!r}"
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return "unknown key (check its spelling and indentation)"
    if kind in ("value_error", "assertion_error"):
        return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind == "union_tag_invalid":
        kinds = ", ".join(SOURCE_KINDS)
        return f"unknown kind {error['input'].get('kind')!r} (expected one of: {kinds})"
    if kind == "union_tag_not_found":
        return f"required key 'kind' is missing (one of: {', '.join(SOURCE_KINDS)})"
    if kind == "literal_error":
        return f"{msg[0].lower()}{msg[1:]}{shown}"
    return f"{msg[0].lower()}{msg[1:]}{shown}"


def _unknown_sources(document: dict[str, Any], at: At) -> list[str]:
    """Subscriptions naming sources that do not exist (checked even when other keys are bad)."""
    sources, subscriptions = document.get("sources"), document.get("subscriptions")
    if not isinstance(sources, dict) or not isinstance(subscriptions, dict):
        return []
    known = ", ".join(sorted(map(str, sources))) or "none"
    errors = []
    for name, sub in subscriptions.items():
        wanted = sub.get("sources") if isinstance(sub, dict) else None
        for i, source in enumerate(wanted if isinstance(wanted, list) else []):
            if source not in sources:
                path = f"subscriptions.{name}.sources[{i}]"
                errors.append(
                    f"{at(path)}: {path}: unknown source {source!r} (configured sources: {known})"
                )
    return errors


def parse_config(
    raw: object,
    label: str,
    env: Mapping[str, str] | None = None,
    document: yamldoc.Document | None = None,
) -> Config:
    """Validate an already-parsed YAML document; raise ConfigError listing every problem.
    With the `document` it was read from, each error says the line and column too."""

    def at(path: str) -> str:
        return label + (document.where(path) if document is not None else "")

    errors: list[str] = []
    if not isinstance(raw, dict):
        raise ConfigError(
            [f"{label}: (top level): expected a mapping with 'sources' and 'subscriptions'"]
        )
    unset: set[str] = set()
    expanded = _expand(raw, "", os.environ if env is None else env, errors, unset, at)
    for section in ("sources", "subscriptions"):
        names = expanded.get(section)
        if isinstance(names, dict):
            for name in names:
                if not isinstance(name, str) or not NAME.match(name):
                    errors.append(
                        f"{at(f'{section}.{name}')}: {section}.{name}: not a valid name "
                        "(lowercase letters, digits, '-' and '_', starting with a letter or digit)"
                    )
    config: Config | None = None
    try:
        config = Config.model_validate(expanded)
    except ValidationError as exc:
        for error in exc.errors():
            path = _key_path(error["loc"])
            if path not in unset:  # already reported as the missing variable
                errors.append(f"{at(path)}: {path}: {_describe(error)}")
    errors.extend(_unknown_sources(expanded, at))
    if errors:
        raise ConfigError(errors)
    assert config is not None
    return config


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a hooks.yaml; raise ConfigError listing every problem."""
    label = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            [f"{label}: file not found (pass -c FILE or set FEEDHOOK_CONFIG)"]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{label}: cannot read the file: {exc}"]) from None
    try:
        document = yamldoc.load(text)
    except yamldoc.YamlError as exc:
        raise ConfigError(
            [f"{label}:{line}" if line[:1].isdigit() else f"{label}: {line}" for line in exc.errors]
        ) from None
    return parse_config(document.data, label, env, document)
