"""hooks.yaml -> Config: YAML read safely, `${VAR}` expanded, every problem collected and
reported at once, each naming the file, the line and column, the key path and what was
expected, so a person can fix the whole file in one pass."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    ValidationError,
)

from feedhook import yamldoc
from feedhook.config.models import SOURCE_KINDS, Config
from feedhook.config.values import NAME

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
