"""Config loading: every error names the file, the key path and what was expected."""

from __future__ import annotations

import json
import re
import resource
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from feedhook.cli import main
from feedhook.config import ConfigError, load_config, parse_config, parse_duration
from feedhook.config.models import config_schema

GOOD = """
sources:
  sequence-prod:
    kind: sequence
    url: https://sequence.example.com/api
    username: robot_user
    password: ${SEQ_PASSWORD}
  movida-prod:
    kind: movida
    url: https://movida.example.com/api
    username: api_user
    password: ${MOVIDA_PASSWORD:-fallback}
    poll_interval: 30s
subscriptions:
  ops-jobs:
    url: https://ops.example.com/hooks
    secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
    types: ["sequence.job.*", "movida.title.*"]
    sources: [sequence-prod]
    filter: "contains(data.changes, 'status')"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hooks.yaml"
    path.write_text(text)
    return path


def errors_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env=env or {"SEQ_PASSWORD": "x"})
    return info.value.errors


def test_good_config_loads_with_env_and_defaults(tmp_path: Path) -> None:
    """${VAR} and ${VAR:-default} expand; defaults fill the rest; models are frozen."""
    config = load_config(write(tmp_path, GOOD), env={"SEQ_PASSWORD": "s3cret"})
    seq = config.sources["sequence-prod"]
    assert seq.password.get_secret_value() == "s3cret"
    assert config.sources["movida-prod"].password.get_secret_value() == "fallback"
    assert seq.format == "json" and seq.poll_interval == 10.0 and seq.start == "latest"
    assert str(seq.rate_limit) == "150/30s"
    assert config.sources["movida-prod"].poll_interval == 30.0
    sub = config.subscriptions["ops-jobs"]
    assert sub.retry.schedule[0] == 5.0 and len(sub.retry.schedule) == 9
    with pytest.raises(Exception, match="frozen"):
        sub.url = "https://elsewhere"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("250ms", 0.25),
        ("10s", 10.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("3d", 259200.0),
        ("1.5s", 1.5),
        (7, 7.0),
    ],
)
def test_durations(text: object, expected: float) -> None:
    """The documented duration forms."""
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["soon", "-1s", "0s", "10 parsecs", True])
def test_bad_durations(bad: object) -> None:
    """Anything else is refused with a hint."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("edit", "path", "message"),
    [
        (
            ("url: https://ops.example.com/hooks", "url: ftp://x"),
            "subscriptions.ops-jobs.url",
            "not an http(s) URL: 'ftp://x'",
        ),
        (
            ("    poll_interval: 30s", "    poll_intervall: 30s"),
            "sources.movida-prod.poll_intervall",
            "unknown key",
        ),
        (
            ("password: ${SEQ_PASSWORD}", "password: ${NOT_SET_ANYWHERE}"),
            "sources.sequence-prod.password",
            "environment variable NOT_SET_ANYWHERE is not set",
        ),
        (
            ('"sequence.job.*", ', '"sequence.[job", '),
            "subscriptions.ops-jobs.types[0]",
            "not a type glob",
        ),
        (
            ("contains(data.changes, 'status')", "contains(data.changes"),
            "subscriptions.ops-jobs.filter",
            "not a valid JMESPath expression",
        ),
        (
            ("sources: [sequence-prod]", "sources: [sequense-prod]"),
            "subscriptions.ops-jobs.sources[0]",
            "unknown source 'sequense-prod'",
        ),
        (("kind: movida", "kind: movie"), "sources.movida-prod", "unknown kind 'movie'"),
        (
            ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "plain-secret"),
            "subscriptions.ops-jobs.secret",
            "whsec_",
        ),
        (
            ("    poll_interval: 30s", "    poll_interval: soon"),
            "sources.movida-prod.poll_interval",
            "expected a duration",
        ),
    ],
)
def test_each_error_names_file_and_key_path(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    edit: tuple[str, str],
    path: str,
    message: str,
) -> None:
    """Each kind of mistake makes `feedhook check` exit 2 with `file:line:col: key.path: what`."""
    assert edit[0] in GOOD
    monkeypatch.setenv("SEQ_PASSWORD", "x")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    config = write(tmp_path, GOOD.replace(edit[0], edit[1]))
    assert main(["check", "-c", str(config)]) == 2
    lines = capsys.readouterr().err.splitlines()
    head = re.compile(rf"{re.escape(str(config))}:\d+:\d+: {re.escape(path)}: ")
    assert any(head.match(line) and message in line for line in lines), lines


def test_every_error_is_listed_at_once(tmp_path: Path) -> None:
    """Several mistakes in one file are all reported, not just the first."""
    text = (
        GOOD.replace("url: https://ops.example.com/hooks", "url: nope")
        .replace("poll_interval: 30s", "poll_interval: later")
        .replace("sources: [sequence-prod]", "sources: [ghost]")
    )
    errors = errors_of(tmp_path, text)
    assert len(errors) == 3, errors


def test_bad_yaml_names_line_and_column(tmp_path: Path) -> None:
    """A YAML syntax error points at where it is."""
    errors = errors_of(tmp_path, "sources:\n  a: [\n")
    assert len(errors) == 1 and ":3:1: invalid YAML" in errors[0]


def test_secret_values_never_echoed(tmp_path: Path) -> None:
    """A wrong secret is described, never printed back."""
    text = GOOD.replace("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "hunter2-sentinel")
    assert not any("hunter2-sentinel" in e for e in errors_of(tmp_path, text))


def test_credentials_in_urls_are_masked() -> None:
    """user:password@ inside a URL never reaches an error message."""
    raw = {
        "sources": {
            "s": {
                "kind": "sequence",
                "url": "ftp://u:pw-sentinel@h/api",
                "username": "u",
                "password": "p",
            }
        }
    }
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "x.yaml", env={})
    assert "pw-sentinel" not in str(info.value)
    assert "***@h" in str(info.value)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("sources: [1, 2]\n", "sources"),
        ("just a string\n", "(top level)"),
        ("sources:\n  s:\n    url: https://x/api\n", "sources.s"),
    ],
)
def test_wrong_shapes(tmp_path: Path, text: str, path: str) -> None:
    """A document of the wrong shape still gets a key path, not a traceback."""
    errors = errors_of(tmp_path, text)
    assert any(f": {path}" in e for e in errors), errors


def test_check_command_summarizes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`feedhook check` prints each source and what each subscription receives, exit 0."""
    monkeypatch.setenv("SEQ_PASSWORD", "s3cret-sentinel")
    assert main(["check", "-c", str(write(tmp_path, GOOD))]) == 0
    out = capsys.readouterr().out
    assert "sequence-prod: sequence at https://sequence.example.com/api" in out
    assert "ops-jobs -> https://ops.example.com/hooks" in out
    assert "types:   sequence.job.*, movida.title.*" in out
    assert "sources: sequence-prod" in out
    assert "filter:  contains(data.changes, 'status')" in out
    assert "s3cret-sentinel" not in out


def test_check_command_exits_2_listing_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad file: exit 2, one line per error on stderr."""
    path = write(tmp_path, GOOD.replace("https://ops.example.com/hooks", "ftp://x"))
    assert main(["check", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:16:10: subscriptions.ops-jobs.url: not an http(s) URL: 'ftp://x'" in err
    assert f"{path}:7:15: sources.sequence-prod.password: environment variable SEQ_PASSWORD" in err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config that is not there says how to point at one."""
    assert main(["check", "-c", str(tmp_path / "nope.yaml")]) == 2
    assert "file not found (pass -c FILE or set FEEDHOOK_CONFIG)" in capsys.readouterr().err


def test_the_example_config_is_valid(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """hooks.example.yaml, which documents every key, passes `feedhook check`."""
    for name in (
        "SEQUENCE_PASSWORD",
        "MOVIDA_PASSWORD",
        "TEAMHUB_COMPANY_KEY",
        "TEAMHUB_ACCOUNT_KEY",
        "MODULO_CLIENT_SECRET",
    ):
        monkeypatch.setenv(name, "sentinel-value")
    monkeypatch.setenv("OPS_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    example = Path(__file__).parents[2] / "hooks.example.yaml"
    assert main(["check", "-c", str(example)]) == 0
    out = capsys.readouterr().out
    for kind in ("sequence", "movida", "teamhub", "modulo"):
        assert f": {kind} at " in out
    assert "enriches job_*, task_updated with diffs: one request per distinct subject" in out
    assert "sentinel-value" not in out


def test_enrich_is_checked_where_it_is_written() -> None:
    """`enrich` needs at least one type, is a BeBanjo setting, and its errors say where."""
    feed = {"kind": "sequence", "url": "https://x/api", "username": "u", "password": "p"}
    with pytest.raises(ConfigError) as empty:
        parse_config({"sources": {"seq": {**feed, "enrich": {"types": []}}}}, "t", env={})
    assert "sources.seq.enrich.types" in str(empty.value)
    teamhub = {"kind": "teamhub", "url": "https://x/api", "company_key": "c", "account_key": "a"}
    with pytest.raises(ConfigError) as elsewhere:
        parse_config({"sources": {"th": {**teamhub, "enrich": {"types": ["*"]}}}}, "t", env={})
    assert "sources.th.enrich" in str(elsewhere.value)
    config = parse_config(
        {"sources": {"seq": {**feed, "enrich": {"types": ["job_*"], "max_wait": "30s"}}}},
        "t",
        env={},
    )
    assert config.sources["seq"].enrich.max_wait == 30.0  # type: ignore[union-attr]


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """FEEDHOOK_* with their documented defaults; levels and formats in any case."""
    import os

    from feedhook.settings import Settings

    for name in [n for n in os.environ if n.startswith("FEEDHOOK_")]:
        monkeypatch.delenv(name)
    defaults = Settings()
    assert (defaults.config, defaults.db, defaults.admin_host, defaults.admin_port) == (
        "hooks.yaml",
        "feedhook.db",
        "127.0.0.1",
        8080,
    )
    assert defaults.admin_token is None and defaults.log_format == "auto"
    monkeypatch.setenv("FEEDHOOK_LOG_LEVEL", "debug")
    monkeypatch.setenv("FEEDHOOK_LOG_FORMAT", "JSON")
    monkeypatch.setenv("FEEDHOOK_ADMIN_PORT", "9090")
    settings = Settings()
    assert (settings.log_level, settings.log_format, settings.admin_port) == ("DEBUG", "json", 9090)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("FEEDHOOK_ADMIN_PORT", "99999", "FEEDHOOK_ADMIN_PORT=99999: expected a TCP port"),
        ("FEEDHOOK_ADMIN_PORT", "eighty", "FEEDHOOK_ADMIN_PORT=eighty: expected a TCP port"),
        ("FEEDHOOK_LOG_LEVEL", "loud", "FEEDHOOK_LOG_LEVEL=loud: expected DEBUG, INFO"),
        ("FEEDHOOK_INGEST_PROCESS", "maybe", "FEEDHOOK_INGEST_PROCESS=maybe: expected true"),
        ("FEEDHOOK_PIN_WORKER", "maybe", "FEEDHOOK_PIN_WORKER=maybe: expected true"),
    ],
)
def test_a_bad_environment_variable_gets_one_actionable_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    value: str,
    expected: str,
) -> None:
    """No pydantic dump and no silent wrap-around: exit 2 with one line naming the variable,
    what it holds and what it should."""
    monkeypatch.setenv(name, value)
    assert main(["check", "-c", str(write(tmp_path, GOOD))]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"feedhook: {expected}"), lines


# --- hostile and mistaken YAML -------------------------------------------------------

ALIAS_BOMB = """
a: &a ["x","x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h,*h]
sources: {}
"""


def test_an_alias_bomb_is_refused_quickly_with_flat_memory(tmp_path: Path) -> None:
    """Nested aliases naming a billion values: a config error in well under a second,
    and the process's memory does not grow."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    errors = errors_of(tmp_path, ALIAS_BOMB)
    assert time.monotonic() - started < 0.5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB
    assert len(errors) == 1 and "alias bomb" in errors[0], errors
    assert re.match(rf"{re.escape(str(tmp_path / 'hooks.yaml'))}:\d+:\d+: ", errors[0])


def test_anchors_aliases_and_merge_keys_still_work(tmp_path: Path) -> None:
    """Ordinary reuse through anchors and `<<: *defaults` loads as YAML says."""
    text = (
        GOOD
        + """  ops-tasks:
    <<: &defaults
      url: https://ops.example.com/tasks
      timeout: 5s
      types: ["sequence.task.*"]
    secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
  ops-assets:
    <<: *defaults
    types: ["sequence.asset.*"]
"""
    )
    config = load_config(write(tmp_path, text), env={"SEQ_PASSWORD": "x"})
    assert config.subscriptions["ops-tasks"].timeout == 5.0
    assert config.subscriptions["ops-assets"].url == "https://ops.example.com/tasks"
    assert config.subscriptions["ops-assets"].types == ("sequence.asset.*",)


def test_a_key_written_twice_is_an_error_naming_both_lines(tmp_path: Path) -> None:
    """Two `ops-jobs:` subscriptions: not one silently dropped, an error with both lines."""
    text = (
        GOOD
        + """  ops-jobs:
    url: https://other.example.com/hooks
    types: ["*"]
"""
    )
    errors = errors_of(tmp_path, text)
    assert len(errors) == 1, errors
    assert re.search(
        r":21:3: subscriptions\.ops-jobs: duplicate key \(first written at line 15\)", errors[0]
    ), errors


def test_header_values_are_never_echoed(tmp_path: Path) -> None:
    """A header whose value is not a string is described without its value."""
    text = GOOD + "    headers:\n      Authorization: {token: sentinel-credential}\n"
    errors = errors_of(tmp_path, text)
    assert errors and not any("sentinel-credential" in e for e in errors), errors


@pytest.mark.parametrize(
    ("url", "headers", "message"),
    [
        (
            "https://u:pw@ops.example.com/hooks",
            {"Authorization": "Bearer abc"},
            "credentials in the url and an Authorization header",
        ),
        ("https://ops.example.com/hooks", {"X-Team": "ops\r\nX-Evil: 1"}, "line break"),
        ("https://ops.example.com/hooks", {"X-Team": "ops\nmore"}, "line break"),
    ],
)
def test_subscriptions_that_could_never_deliver_are_config_errors(
    url: str, headers: dict[str, str], message: str
) -> None:
    """URL credentials beside an Authorization header, or a header value with CR/LF,
    would fail every delivery: `check` refuses them."""
    raw = {"sources": {}, "subscriptions": {"s": {"url": url, "types": ["*"], "headers": headers}}}
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "x.yaml", env={})
    assert message in str(info.value), info.value.errors
    assert "pw" not in str(info.value).replace("pw@", "")


def test_the_committed_schema_is_the_models_and_editors_accept_the_example() -> None:
    """hooks.schema.json is what `feedhook schema` prints (regenerate it when a model
    changes); the example validates against it as an editor would check it, and a typo'd
    key, a bad duration and a bad rate do not."""
    root = Path(__file__).parents[2]
    committed = json.loads((root / "hooks.schema.json").read_text())
    assert committed == config_schema(), "run: feedhook schema > hooks.schema.json"
    validator = jsonschema.Draft202012Validator(committed)
    example = yaml.safe_load((root / "hooks.example.yaml").read_text())
    assert list(validator.iter_errors(example)) == []
    bad = {
        "sources": {"s": {"kind": "sequence", "url": "https://x/api", "poll_intervall": "1s"}},
        "subscriptions": {
            "a": {"url": "https://r/", "types": ["*"], "timeout": "soon", "rate_limit": "fast"}
        },
    }
    problems = {tuple(e.absolute_path) for e in validator.iter_errors(bad)}
    assert ("subscriptions", "a", "timeout") in problems
    assert ("subscriptions", "a", "rate_limit") in problems
    assert any(path[:2] == ("sources", "s") for path in problems)
