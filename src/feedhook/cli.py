"""The feedhook command. Exit codes: 0 ok, 1 runtime failure, 2 usage or config error."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from feedhook import __version__, logs
from feedhook.config import (
    Config,
    ConfigError,
    SubscriptionConfig,
    check_glob,
    load_config,
    parse_duration,
    redact_url,
)
from feedhook.config.values import format_duration
from feedhook.process import run_async, tune_runtime
from feedhook.report import dead_letter_document, status_document, trace_document
from feedhook.settings import Settings, SettingsError, load_settings
from feedhook.store import (
    PruneResult,
    Status,
    Storage,
    Store,
    StoreError,
    open_store,
    sqlite_path,
)
from feedhook.store.base import DISABLED_BY_OPERATOR, Trace

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input from the person at the keyboard: exit 2 with this message."""


def _duration_arg(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="feedhook",
        description="Turn pull-style event feeds into signed, retried webhooks.",
    )
    parser.add_argument("--version", action="version", version=f"feedhook {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("-c", "--config", help="the hooks YAML (default: $FEEDHOOK_CONFIG)")
        return p

    run = with_config(commands.add_parser("run", help="tail the feeds and deliver webhooks"))
    run.add_argument(
        "--grace",
        type=_duration_arg,
        default=8.0,
        help="how long in-flight deliveries may finish after SIGTERM (default 8s)",
    )
    check = with_config(commands.add_parser("check", help="validate the config and summarize it"))
    check.add_argument(
        "--connect", action="store_true", help="also try each source's URL and credentials"
    )

    status = with_config(commands.add_parser("status", help="cursors, errors and queues"))
    status.add_argument("--json", action="store_true", help="machine-readable output")

    dlq = commands.add_parser("dlq", help="inspect, replay or purge dead letters")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    dlq_list = dlq_commands.add_parser("list", help="list dead letters")
    dlq_list.add_argument("--subscription", "-s")
    dlq_list.add_argument("--json", action="store_true")
    dlq_list.add_argument("--limit", type=int, default=100)
    dlq_list.add_argument("--after", type=int, default=0, help="list ids above this one")
    dlq_show = dlq_commands.add_parser("show", help="one dead letter, with its event")
    dlq_show.add_argument("id", type=int)
    for action, text in (("replay", "send again"), ("purge", "delete for good")):
        sub = dlq_commands.add_parser(action, help=f"{text} dead letters")
        sub.add_argument("ids", type=int, nargs="*", metavar="ID")
        sub.add_argument("--all", action="store_true", help="every dead letter (see -s)")
        sub.add_argument("--subscription", "-s")

    replay = with_config(
        commands.add_parser("replay", help="queue stored events for a subscription again")
    )
    replay.add_argument("envelope_ids", nargs="*", metavar="ENVELOPE_ID")
    replay.add_argument("--subscription", "-s", required=True)
    replay.add_argument("--source", help="only events from this source")
    replay.add_argument("--type", dest="type_glob", help="only types matching this glob")
    replay.add_argument(
        "--since", help="only events ingested since: a duration (2h) or a time (2026-11-01T00:00Z)"
    )
    replay.add_argument("--all", action="store_true", help="every stored event that matches")

    trace = commands.add_parser("trace", help="did event X reach Y? every attempt of one event")
    trace.add_argument("envelope_id", metavar="ENVELOPE_ID")
    trace.add_argument("--json", action="store_true", help="machine-readable output")

    with_config(commands.add_parser("prune", help="remove finished work past its retention, once"))

    commands.add_parser(
        "healthcheck", help="exit 0 if the admin server of a running feedhook answers /healthz"
    )

    demo = commands.add_parser("demo", help="watch feedhook work against simulated feeds")
    demo.add_argument("--events", type=int, default=40, help="events to generate (default 40)")
    demo.add_argument(
        "--duration", type=_duration_arg, default=5.0, help="spread them over (default 5s)"
    )
    demo.add_argument("--keep", metavar="DIR", help="keep the database and config in DIR")

    sim = commands.add_parser(
        "sim", help="serve simulated Sequence, Movida, TeamHub, Modulo and a receiver"
    )
    sim.add_argument("--port-base", type=int, default=9100, help="first of 5 ports (9100)")
    sim.add_argument("--rate", type=float, default=1.0, help="events per second (1)")
    sim.add_argument("--faults", action="store_true", help="now and then, a feed fails")
    sim.add_argument("-o", "--output", help="write the hooks.yaml here (default: print it)")

    send_test = with_config(
        commands.add_parser("send-test", help="send one signed test event to a subscription")
    )
    send_test.add_argument("subscription")

    subscriptions = commands.add_parser(
        "subscriptions", help="disable a subscription (maintenance) or enable it again"
    )
    subscription_commands = subscriptions.add_subparsers(
        dest="subscriptions_command", metavar="ACTION", required=True
    )
    for action, text in (
        ("disable", "send nothing to it; its deliveries wait as pending"),
        ("enable", "send again: its backlog goes out in order"),
    ):
        with_config(subscription_commands.add_parser(action, help=text)).add_argument("name")

    commands.add_parser("schema", help="print the JSON Schema of hooks.yaml (for editors)")

    keys = commands.add_parser("keys", help="ed25519 keys for v1a signatures")
    keys.add_subparsers(dest="keys_command", required=True).add_parser(
        "generate", help="print a new whsk_ signing key and its whpk_ public key"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        for line in exc.errors:
            print(f"feedhook: {line}", file=sys.stderr)
        return EXIT_USAGE
    logs.setup(settings.log_level, settings.log_format)
    handlers: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
        "run": cmd_run,
        "check": cmd_check,
        "status": cmd_status,
        "dlq": cmd_dlq,
        "replay": cmd_replay,
        "demo": cmd_demo,
        "sim": cmd_sim,
        "trace": cmd_trace,
        "schema": cmd_schema,
        "healthcheck": cmd_healthcheck,
        "prune": cmd_prune,
        "send-test": cmd_send_test,
        "keys": cmd_keys,
        "subscriptions": cmd_subscriptions,
    }
    try:
        return handlers[args.command](args, settings)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        print(f"feedhook: {len(exc.errors)} config error(s); nothing was started", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"feedhook: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreError as exc:
        print(f"feedhook: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `feedhook dlq list | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _config_path(args: argparse.Namespace, settings: Settings) -> str:
    return getattr(args, "config", None) or settings.config


def _load(args: argparse.Namespace, settings: Settings) -> Config:
    config = load_config(_config_path(args, settings))
    # Whatever this command prints (a receiver's answer, a stored error) is masked.
    logs.redact.add(config.secret_values())
    return config


# --- run -----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from feedhook.admin import AdminError, AdminServer, Runtime
    from feedhook.app import Worker, signal_handlers
    from feedhook.ingest.child import ChildSettings
    from feedhook.placement import Placement

    path = _config_path(args, settings)
    config = load_config(path)
    logs.redact.update(config.secret_values() | {settings.admin_token or ""})
    tune_runtime()
    # Before any thread starts: each new one starts on its creator's CPU.
    held = Placement.start() if settings.pin_worker else None

    async def run() -> int:
        runtime = Runtime()
        admin = AdminServer(runtime, settings)
        await admin.start()  # health answers while the store opens; readiness waits
        placing = asyncio.create_task(held.run(), name="placement") if held else None
        try:
            async with open_store(settings.db, holder=True, lease=settings.lease) as store:
                worker = Worker(
                    config,
                    store,
                    grace=args.grace,
                    config_path=path,
                    ingest_process=ChildSettings.of(settings, held.allowed if held else None)
                    if settings.ingest_process
                    else None,
                    origin=settings.origin,
                )
                runtime.worker = worker
                with signal_handlers(worker):
                    await worker.run()
        finally:
            if placing is not None:
                placing.cancel()
            await admin.stop()
        return EXIT_OK

    try:
        return run_async(run())
    except* (StoreError, AdminError) as known:
        for exc in known.exceptions:
            print(f"feedhook: {exc}", file=sys.stderr)
    except* Exception as failed:
        for error in failed.exceptions:
            print(f"feedhook: stopped by an unexpected error: {error!r}", file=sys.stderr)
    return EXIT_FAILURE


# --- check ---------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    path = _config_path(args, settings)
    config = load_config(path)
    print(f"{path}: OK")
    print(f"\nsources ({len(config.sources)}):")
    for name, source in config.sources.items():
        print(f"  {name}: {source.describe()}")
        if (enrich := getattr(source, "enrich", None)) is not None:
            print(f"    {enrich.describe(source.rate_limit)}")
    print(f"\nsubscriptions ({len(config.subscriptions)}):")
    for name, sub in config.subscriptions.items():
        print(f"  {name} -> {redact_url(sub.url, query=True)}")
        print(f"    types:   {', '.join(sub.types)}")
        for warning in _glob_warnings(sub, config):
            print(f"    warning: {warning}")
        print(f"    sources: {', '.join(sub.sources) if sub.sources else 'all'}")
        if sub.filter:
            print(f"    filter:  {sub.filter}")
            for warning in _filter_warnings(name, sub, config):
                print(f"    warning: {warning}")
        schemes = [name for name, key in (("v1", sub.secret), ("v1a", sub.signing_key)) if key]
        signing = f"signed ({', '.join(schemes)})" if schemes else "UNSIGNED (no secret)"
        if sub.previous_secrets:
            signing += f", plus {len(sub.previous_secrets)} previous secret(s)"
        print(f"    {signing}; timeout {sub.timeout:g}s")
        print(f"    limits:  {sub.limits()}")
    if not config.subscriptions:
        print("  (none: events will be stored but sent nowhere)")
    retention = config.retention
    dead = "forever" if retention.dead_letters is None else f"{retention.dead_letters:g}s"
    print(
        f"\nretention: delivered {retention.delivered:g}s, dead letters {dead},"
        f" pruned every {retention.interval:g}s"
    )
    if not args.connect:
        return EXIT_OK
    print("\nconnections (one page read from each source):")
    verdicts = asyncio.run(_connect(config))
    for name, (verdict, detail) in verdicts.items():
        print(f"  {name}: {verdict}{': ' + detail if detail else ''}")
    return EXIT_OK if all(v == "ok" for v, _ in verdicts.values()) else EXIT_FAILURE


async def _connect(config: Config) -> dict[str, tuple[str, str]]:
    """Each source read once, all at once: `ok`, `credentials rejected`, `unreachable`
    or `failing`, with the reason (masked as everywhere)."""
    from feedhook.sources import FeedError, build_source

    async def one(name: str) -> tuple[str, str]:
        source = build_source(name, config.sources[name])
        try:
            await source.open()
            cursor = await asyncio.wait_for(source.initial_cursor(), config.sources[name].timeout)
            page = await asyncio.wait_for(source.fetch(cursor), config.sources[name].timeout)
            return "ok", f"{len(page.events)} events on the first page"
        except FeedError as exc:
            message = logs.redact(str(exc))
            if exc.cause in ("http_401", "http_403") or "credentials rejected" in message:
                return "credentials rejected", message
            if exc.cause in ("connect", "timeout"):
                return "unreachable", message
            return "failing", message
        except TimeoutError:
            return "unreachable", f"no answer within {config.sources[name].timeout:g}s"
        finally:
            await source.close()

    names = list(config.sources)
    results = await asyncio.gather(*(one(name) for name in names))
    return dict(zip(names, results, strict=True))


def _glob_warnings(sub: SubscriptionConfig, config: Config) -> list[str]:
    """Type globs that match no type the subscription's sources publish (per the vendors'
    pages): a typo, or a type of a system not configured."""
    import fnmatch

    from feedhook.samples import known_types

    names = sub.sources if sub.sources is not None else tuple(config.sources)
    types = set().union(
        *(known_types(config.sources[n].kind) for n in names if n in config.sources)
    )
    return [
        f"the type glob {glob!r} matches no type its sources publish"
        " (see the envelope types in the README)"
        for glob in sub.types
        if not any(fnmatch.fnmatchcase(t, glob) for t in types)
    ]


def _filter_warnings(name: str, sub: SubscriptionConfig, config: Config) -> list[str]:
    """The filter tried on an example event of each type the subscription can receive:
    where it fails, say so (at run time such events count as no match)."""
    from feedhook.router import FilterError, compile_route
    from feedhook.samples import sample_envelopes

    route = compile_route(name, sub)
    warnings: dict[str, str] = {}
    for source_name, source in config.sources.items():
        for envelope in sample_envelopes(source_name, source.kind, source.url):
            if not route.wants(envelope.feedhooksource, envelope.type):
                continue
            try:
                route.accepts(envelope.to_dict())
            except FilterError as exc:
                warnings.setdefault(
                    str(exc),
                    f"the filter fails on an example {envelope.type} event ({exc}); such"
                    " events will count as no match for this subscription",
                )
    return list(warnings.values())


# --- status and dead letters ---------------------------------------------------------


def _open_existing(settings: Settings) -> Store:
    """The store of a `feedhook run` for the read-only and operator commands, which never
    create one."""
    path = sqlite_path(settings.db)
    if path is not None and path != ":memory:" and not os.path.exists(path):
        raise UsageError(f"no database at {path}; set FEEDHOOK_DB to the file `feedhook run` uses")
    return open_store(settings.db)


def _when(iso: str | None) -> str:
    if iso is None:
        return "never"
    moment = datetime.fromisoformat(iso)
    delta = time.time() - moment.timestamp()
    relative = f"{format_duration(delta)} ago" if delta >= 0 else f"in {format_duration(-delta)}"
    return f"{moment:%Y-%m-%d %H:%M:%S}Z ({relative})"


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    config: Config | None = None
    try:
        config = _load(args, settings)
    except ConfigError:
        if args.config:
            raise

    async def read() -> tuple[Status, Storage]:
        async with _open_existing(settings) as store:
            return await store.status(), await store.storage()

    status, storage = asyncio.run(read())
    document = status_document(status, config, now=time.time(), storage=storage)
    if args.json:
        print(json.dumps(document, indent=2))
        return EXIT_OK
    print("sources:")
    for name, s in document["sources"].items():
        gone = "" if s["configured"] else "  (no longer configured)"
        print(f"  {name}{gone}")
        print(f"    cursor:     {s['cursor'] or '(none yet)'}")
        print(f"    last poll:  {_when(s['last_poll_at'])}")
        print(f"    last ok:    {_when(s['last_success_at'])}")
        if "polled_by" in s:
            print(f"    polled by:  {s['polled_by']}")
        if s["last_error"]:
            print(f"    last error: {s['last_error']} at {_when(s['last_error_at'])}")
    if "replicas" in document:
        print(f"replicas alive: {', '.join(document['replicas'])}")
    stored = document["storage"]
    print(
        f"stored: {stored['events']:,} events; database {_mb(stored['bytes'])}"
        f" ({_mb(stored['free_bytes'])} free for reuse)"
    )
    print("subscriptions (delivered: since the start, pruning does not lower it):")
    width = max((len(n) for n in document["subscriptions"]), default=12)
    print(f"  {'name':<{width}}  {'pending':>9}  {'delivered':>9}  {'dead':>6}  state")
    for name, c in document["subscriptions"].items():
        gone = "  (no longer configured)" if not c["configured"] else ""
        state = c["state"]
        print(
            f"  {name:<{width}}  {c['pending']:>9}  {c['delivered']:>9}  {c['dead']:>6}"
            f"  {state['state']}{gone}"
        )
        if state["state"] != "active":
            until = f", until {_when(state['until'])}" if state["until"] else ""
            print(f"    {state['reason']} (since {_when(state['since'])}{until})")
    return EXIT_OK


def _mb(size: int) -> str:
    return f"{size / 1_048_576:,.1f} MB"


def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    config = _load(args, settings)
    retention = config.retention

    async def act() -> tuple[PruneResult, Storage]:
        async with _open_existing(settings) as store:
            removed = await store.prune(time.time(), retention.delivered, retention.dead_letters)
            return removed, await store.storage()

    removed, storage = asyncio.run(act())
    kept = "forever" if retention.dead_letters is None else f"{retention.dead_letters:g}s"
    print(
        f"pruned {removed.deliveries:,} delivered deliveries, {removed.dead_letters:,} dead"
        f" letters, {removed.events:,} events and {removed.subjects:,} deleted subjects"
        f" (retention: delivered {retention.delivered:g}s, dead letters {kept})"
    )
    print(
        f"stored: {storage.events:,} events, {storage.subjects:,} subjects;"
        f" database {_mb(storage.bytes)}"
        f" ({_mb(storage.free_bytes)} free, reused before the file grows)"
    )
    return EXIT_OK


def cmd_dlq(args: argparse.Namespace, settings: Settings) -> int:
    action = args.dlq_command
    if action in ("replay", "purge") and not args.ids and not args.all:
        raise UsageError(f"dlq {action}: name dead letter IDs, or --all (optionally with -s)")
    if action in ("replay", "purge") and args.ids and args.all:
        raise UsageError(f"dlq {action}: give IDs or --all, not both")

    with contextlib.suppress(ConfigError):
        _load(args, settings)  # only to know the secrets to mask in what is shown

    async def act() -> int:
        async with _open_existing(settings) as store:
            if action == "list":
                letters = await store.list_dead(args.subscription, args.limit, args.after)
                if args.json:
                    print(json.dumps([dead_letter_document(d) for d in letters], indent=2))
                elif not letters:
                    print("no dead letters")
                else:
                    _print_dead(letters)
                return EXIT_OK
            if action == "show":
                letter = await store.get_dead(args.id)
                if letter is None:
                    print(f"feedhook: no dead letter {args.id}", file=sys.stderr)
                    return EXIT_FAILURE
                print(json.dumps(dead_letter_document(letter, with_event=True), indent=2))
                return EXIT_OK
            ids = args.ids or None
            if action == "replay":
                count = await store.replay_dead(ids, args.subscription, time.time())
                print(f"replayed {count} dead letter(s); a running feedhook delivers them now")
            else:
                count = await store.purge_dead(ids, args.subscription)
                print(f"purged {count} dead letter(s)")
            if ids and count < len(ids):
                print(
                    f"feedhook: {len(ids) - count} of the given ids were not found", file=sys.stderr
                )
                return EXIT_FAILURE
            return EXIT_OK

    return asyncio.run(act())


def _print_dead(letters: Sequence[Any]) -> None:
    print(f"{'id':>6}  {'failed at (UTC)':<19}  {'subscription':<16}  envelope, type / reason")
    for d in letters:
        failed = datetime.fromtimestamp(d.failed_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{d.id:>6}  {failed:<19}  {d.subscription:<16}  {d.envelope_id} {d.type}")
        print(f"{'':>6}  {'':<19}  {'':<16}  {d.reason}")


def _since(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return time.time() - parse_duration(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"--since: expected a duration (2h) or a time, got {value!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from feedhook.replay import ReplayResult, replay

    config = _load(args, settings)
    if args.subscription not in config.subscriptions:
        known = ", ".join(config.subscriptions) or "none"
        raise UsageError(f"no subscription {args.subscription!r} (configured: {known})")
    if args.source is not None and args.source not in config.sources:
        raise UsageError(f"no source {args.source!r} (configured: {', '.join(config.sources)})")
    if args.type_glob is not None:
        try:
            check_glob(args.type_glob)
        except ValueError as exc:
            raise UsageError(f"--type: {exc}") from None
    filters = (args.envelope_ids, args.source, args.type_glob, args.since)
    if not args.all and not any(filters):
        raise UsageError(
            "replay: name envelope ids, or narrow with --source/--type/--since, or --all"
        )
    since = _since(args.since)

    async def act() -> ReplayResult:
        async with _open_existing(settings) as store:
            return await replay(
                store,
                args.subscription,
                config.subscriptions[args.subscription],
                time.time(),
                envelope_ids=args.envelope_ids or None,
                source=args.source,
                type_glob=args.type_glob,
                since=since,
            )

    result = asyncio.run(act())
    skipped = (
        f"; {result.not_wanted} stored event(s) matched the command's filters but not the"
        " subscription's types, sources or filter, and were left out"
        if result.not_wanted
        else ""
    )
    print(
        f"queued {result.queued} event(s) for {args.subscription}{skipped};"
        " a running feedhook delivers them now"
    )
    if result.missing:
        print(
            f"feedhook: not stored, so not queued: {', '.join(result.missing)}"
            " (check the envelope ids: <source>:<upstream id>)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_OK


def cmd_healthcheck(args: argparse.Namespace, settings: Settings) -> int:
    """For container HEALTHCHECKs: slim images have no curl."""
    import urllib.error
    import urllib.request

    host = settings.admin_host if settings.admin_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    url = f"http://{host}:{settings.admin_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            print(f"{url}: HTTP {response.status}")
            return EXIT_OK
    except urllib.error.HTTPError as exc:
        print(f"{url}: HTTP {exc.code}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
    return EXIT_FAILURE


# --- demo and send-test --------------------------------------------------------------


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from feedhook.demo import run_demo

    if args.events < 1:
        raise UsageError("--events must be at least 1")
    if "FEEDHOOK_LOG_LEVEL" not in os.environ:
        logs.setup("WARNING", settings.log_format)  # the demo's own lines tell the story
    keep = Path(args.keep) if args.keep else None
    return asyncio.run(run_demo(args.events, args.duration, keep))


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    from feedhook.delivery.signing import new_key_pair

    secret, public = new_key_pair()
    print(f"signing key (the subscription's signing_key; keep it secret): {secret}")
    print(f"public key (give it to the receiver; it verifies v1a signatures): {public}")
    return EXIT_OK


def cmd_subscriptions(args: argparse.Namespace, settings: Settings) -> int:
    """Disable or enable a subscription in the store: every worker on it (`feedhook run`,
    each replica) obeys within a second; the state survives restarts and reloads."""
    config = _load(args, settings)
    name, enable = args.name, args.subscriptions_command == "enable"
    if name not in config.subscriptions:
        known = ", ".join(config.subscriptions) or "none"
        raise UsageError(f"no subscription {name!r} (configured: {known})")

    async def change() -> tuple[bool, int]:
        async with _open_existing(settings) as store:
            now = time.time()
            if enable:
                changed = await store.enable(name, now)
            else:
                changed = await store.disable(name, DISABLED_BY_OPERATOR, now)
            counts = (await store.counts()).get(name)
            return changed, counts.pending if counts else 0

    changed, pending = asyncio.run(change())
    if enable:
        what = "enabled" if changed else "was not disabled; nothing changed"
        print(f"{name} {what}: {pending:,} pending deliveries go out in order")
    elif changed:
        print(
            f"{name} disabled: nothing is sent to it; {pending:,} pending deliveries (and"
            f" every new one) wait until `feedhook subscriptions enable {name}`"
        )
    else:
        print(f"{name} was already disabled; nothing changed ({pending:,} pending)")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace, settings: Settings) -> int:
    from feedhook.config.models import config_schema

    print(json.dumps(config_schema(), indent=2))
    return EXIT_OK


def cmd_trace(args: argparse.Namespace, settings: Settings) -> int:
    async def read() -> Trace | None:
        async with _open_existing(settings) as store:
            return await store.trace(args.envelope_id)

    trace = asyncio.run(read())
    if trace is None:
        print(
            f"feedhook: no event {args.envelope_id} is stored (ids are <source>:<upstream id>;"
            " pruned events are gone)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    document = trace_document(trace)
    if args.json:
        print(json.dumps(document, indent=2))
        return EXIT_OK
    print(f"{document['envelope_id']}  {document['type']}")
    print(f"  stored {_when(document['ingested_at'])}")
    if not document["subscriptions"]:
        print("  routed to no subscription")
    for name, d in document["subscriptions"].items():
        due = f", due {_when(d['next_attempt_at'])}" if d["next_attempt_at"] else ""
        print(f"  {name}: {d['state']}{due}")
        for a in d["attempts"]:
            status = a["status_code"] if a["status_code"] is not None else "no answer"
            took = f" in {a['duration_ms']} ms" if a["duration_ms"] is not None else ""
            why = f": {a['error']}" if a["error"] else ""
            print(f"    {_when(a['at'])}  {status}{took}  {a['outcome']}{why}")
    return EXIT_OK


def cmd_sim(args: argparse.Namespace, settings: Settings) -> int:
    from feedhook.sim.playground import run_sim

    if not 1 <= args.port_base <= 65531:
        raise UsageError("--port-base: a port from 1 to 65531 (five ports from it are used)")
    if not 0 < args.rate <= 10_000:
        raise UsageError("--rate: events per second, more than 0 and at most 10000")
    output = Path(args.output) if args.output else None
    try:
        return run_async(run_sim(args.port_base, args.rate, args.faults, output))
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_send_test(args: argparse.Namespace, settings: Settings) -> int:
    from feedhook.delivery.sendtest import send_test

    config = _load(args, settings)
    if args.subscription not in config.subscriptions:
        known = ", ".join(config.subscriptions) or "none"
        raise UsageError(f"no subscription {args.subscription!r} (configured: {known})")
    return asyncio.run(send_test(args.subscription, config.subscriptions[args.subscription]))
