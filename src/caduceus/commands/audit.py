"""`caduceus audit`: verify the trail, export it to a SIEM, replay it against a policy pack, tell an incident's
timeline, archive old records.

Every command reads the embedded stack's store (`<state dir>/audit.db`) unless `--db URL` names
another (`sqlite:///path` or `postgresql+psycopg2://user:pass@host/db`). Exit codes: 0 fine,
1 the answer is bad news (tampered, decisions would change, nothing found), 2 the command could
not do its job (bad arguments, store or collector unreachable).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import threading
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from caduceus.audit_views import render_replay, render_timeline, render_verdicts, timeline_json
from caduceus.scripting import BAD, USAGE, AsJson, print_json, suggest
from caduceus_audit import (
    AuditStore,
    CheckpointSourceError,
    DeliveryError,
    Export,
    Formatter,
    HeldCheckpoint,
    LineSink,
    MissingAuditKey,
    Narrator,
    OtlpSink,
    RecordedCall,
    RecordFilter,
    RetentionError,
    SchemaTooNew,
    Sink,
    StoreRefused,
    StoreUnavailable,
    SyslogSink,
    archive_before,
    build_timeline,
    read_bus_checkpoints,
    read_checkpoint_file,
    recorded_calls,
    render_html,
    replay,
    sqlite_path,
    verify_archive,
    verify_trail,
    write_checkpoint_file,
)
from caduceus_bus import BusSettings
from caduceus_contracts import Keyring, SignatureError, load_keyring, subjects
from caduceus_embedded import StateLayout, default_state_dir, read_stack_info

console = Console()
err = Console(stderr=True)

DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

app = typer.Typer(help="The audit trail: verify it, export it, replay it against a policy, read an incident's "
                       "timeline, archive old records.", no_args_is_help=True, rich_markup_mode="rich")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="audit")


class ExportFormat(StrEnum):
    jsonl = "jsonl"
    ocsf = "ocsf"
    cef = "cef"
    syslog = "syslog"
    otel = "otel"


DbOption = Annotated[str | None, typer.Option(
    "--db", help="The audit database URL (sqlite:///path or postgresql+psycopg2://user:pass@host/db); default: the "
                 "embedded stack's <state dir>/audit.db.", envvar="CADUCEUS_AUDIT_DB_URL", show_envvar=False)]
StateDirOption = Annotated[Path | None, typer.Option(help="State dir of the embedded stack (default: "
                                                          "CADUCEUS_STATE_DIR or the user's data dir).")]


def _chain_name(value: str | None) -> str | None:
    if value is not None and not subjects.is_chain(value):
        raise typer.BadParameter(f"{value!r} is no tenant: tenants are 1-63 lowercase letters, digits, '-' or '_'; "
                                 f"messages no tenant owns are kept in the {subjects.SYSTEM_TENANT} chain")
    return value


TenantOption = Annotated[str | None, typer.Option(
    help=f"Only this tenant (or {subjects.SYSTEM_TENANT}: messages no tenant owns).", callback=_chain_name)]


def fail(message: str, code: int = USAGE) -> NoReturn:
    err.print(f"[red]{escape(message)}[/red]")
    raise typer.Exit(code)


def parse_time(text: str, option: str) -> datetime:
    """An ISO 8601 time (UTC unless it says otherwise), or a duration back from now: 30m, 12h, 7d, 2w."""
    if match := DURATION.match(text.strip()):
        return datetime.now(UTC) - timedelta(**{UNITS[match.group(2)]: int(match.group(1))})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        fail(f"{option} {text!r} is neither a time (2026-11-20T09:00:00Z) nor a duration back from now (30m, 12h, 7d)")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def layout(state_dir: Path | None) -> StateLayout:
    return StateLayout(state_dir or default_state_dir())


def open_store(db: str | None, state_dir: Path | None) -> AuditStore:
    """The audit store to read, reachable, or exit 2 saying what to pass instead."""
    url = db or layout(state_dir).audit_db_url
    try:
        make_url(url)
    except ArgumentError:
        fail(f"--db {url!r} is not a database URL: use sqlite:///path/to/audit.db or "
             "postgresql+psycopg2://user:password@host/database")
    path = sqlite_path(url)
    if path is not None and not path.exists():
        where = "--db" if db else f"the state dir {layout(state_dir).root}"
        fail(f"no audit database at {path} ({where}): start the stack with `{suggest('caduceus up', state_dir=state_dir)}`"
             ", or pass --state-dir DIR where it runs, or --db URL")
    store = AuditStore(url)
    try:
        store.ensure_schema()
    except SchemaTooNew as exc:
        fail(str(exc))
    except (StoreUnavailable, StoreRefused) as exc:
        fail(f"cannot reach the audit database at {store.database.display_url}: {exc}. Check --db and that the "
             "database server runs.")
    return store


def guarded(action: Any) -> Any:
    """Run a store-reading action; an unreachable or refusing store is exit 2 with its reason."""
    try:
        return action()
    except (StoreUnavailable, StoreRefused) as exc:
        fail(f"the audit database failed while reading: {exc}")


# --- verify ---------------------------------------------------------------------------------------------------------


@app.command(help="Recompute every tenant's hash chain and check it against the signed checkpoints.\n\n"
                  "Exit 0: intact. Exit 1: tampered (the first bad record of each broken chain is named: changed, "
                  "missing, inserted, reordered, truncated after a checkpoint, or a forged checkpoint). Exit 2: the "
                  "store, the keys or a checkpoint source could not be read.\n\n"
                  "A history rewritten with recomputed hashes is only caught by checkpoints held outside the "
                  "database: pass the file you exported (--checkpoints) or read them from the bus (--bus).\n\n"
                  "Example: caduceus audit verify --checkpoints kept/acme-checkpoints.jsonl --bus")
def verify(
    tenant: TenantOption = None,
    db: DbOption = None,
    state_dir: StateDirOption = None,
    keys_dir: Annotated[Path | None, typer.Option(help="Where audit.pub (the audit service's public key) is; "
                                                       "default: <state dir>/keys.")] = None,
    checkpoints: Annotated[list[Path] | None, typer.Option(
        "--checkpoints", help="A checkpoint file held outside the database (from `caduceus audit checkpoints`); "
                              "repeatable.")] = None,
    bus: Annotated[bool, typer.Option("--bus", help="Also read every checkpoint from the JetStream event stream.")] = False,
    nats_url: Annotated[str | None, typer.Option(help="NATS for --bus (default: the running stack's).")] = None,
    nats_credentials: Annotated[Path | None, typer.Option(
        help="A .creds file allowed to read the event stream, for --bus with --nats-url (the running stack's "
             "operator credential otherwise).")] = None,
    archive: Annotated[list[Path] | None, typer.Option(
        "--archive", help="Also verify an archive file written by `caduceus audit archive`; repeatable.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    store = open_store(db, state_dir)
    keyring = load_keyring(keys_dir or layout(state_dir).keys)
    held, sources = [], ["the database"]
    for path in checkpoints or []:
        try:
            held += [HeldCheckpoint(str(path), event) for event in read_checkpoint_file(path)]
        except CheckpointSourceError as exc:
            fail(str(exc))
        sources.append(str(path))
    if bus:
        held += [HeldCheckpoint("the bus", event)
                 for event in _bus_checkpoints(nats_url, nats_credentials, state_dir, tenant)]
        sources.append("the bus")
    try:
        verdicts = guarded(lambda: verify_trail(store, keyring, tenant=tenant, outside=held))
        verdicts += [_archive_verdict(path, keyring) for path in archive or []]
    except MissingAuditKey as exc:
        fail(f"{exc}: pass --keys-dir DIR holding audit.pub, the audit service's public key (the stack keeps it in "
             "<state dir>/keys)")
    ok = all(verdict.ok for verdict in verdicts)
    if as_json:
        print(json.dumps({"ok": ok, "tenants": [asdict(v) for v in verdicts], "checkpoint_sources": sources},
                         indent=2))
    else:
        render_verdicts(console, verdicts, sources)
        if not verdicts:
            console.print("[yellow]the audit trail is empty[/yellow]")
        elif ok:
            console.print("[green]audit trail intact[/green]")
        else:
            bad = [v for v in verdicts if not v.ok]
            broken = ", ".join(f"{v.tenant} at record {v.first_bad_seq}" if v.first_bad_seq is not None
                               else f"{v.tenant} ({v.problem})" for v in bad)
            records = suggest("caduceus audit export", format="jsonl", tenant=bad[0].tenant, db=db, state_dir=state_dir)
            console.print(f"[bold red]audit trail TAMPERED[/bold red] ({escape(broken)}): keep this database as "
                          "evidence, restore from a backup, and compare the records around the named ones "
                          f"(`{escape(records)}`).")
    raise typer.Exit(0 if ok else BAD)


def _archive_verdict(path: Path, keyring: Keyring):
    try:
        return verify_archive(path, keyring)
    except RetentionError as exc:
        fail(str(exc))


def _bus_checkpoints(nats_url: str | None, credentials: Path | None, state_dir: Path | None,
                     tenant: str | None) -> list[Any]:
    if nats_url is None:
        info = read_stack_info(layout(state_dir).root)
        if info is None:
            fail(f"--bus needs NATS: no stack runs in {layout(state_dir).root}; pass --nats-url nats://host:4222")
        settings = info.bus_settings("operator")
    else:
        settings = BusSettings(nats_url=nats_url, nats_credentials=credentials)
    try:
        return asyncio.run(read_bus_checkpoints(settings, tenant))
    except CheckpointSourceError as exc:
        fail(str(exc))


@app.command(help="Write the signed checkpoints as JSONL, to keep outside the database (a WORM bucket, another "
                  "team's archive) and pass back to `caduceus audit verify --checkpoints FILE`.")
def checkpoints(
    tenant: TenantOption = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")] = None,
    db: DbOption = None,
    state_dir: StateDirOption = None,
) -> None:
    store = open_store(db, state_dir)
    events = guarded(lambda: store.checkpoints.events(tenant))
    if output is None:
        for event in events:
            print(event.model_dump_json())
    else:
        write_checkpoint_file(output, events)
        err.print(f"wrote {len(events)} checkpoints to {output}")


# --- export ---------------------------------------------------------------------------------------------------------


@app.command(help="Export records for a SIEM or a tracing backend, once or following new records (--follow).\n\n"
                  "Formats: jsonl (every stored field), ocsf (OCSF 1.8.0 API Activity, one JSON per line), cef "
                  "(ArcSight CEF lines), syslog (RFC 5424; to stdout or --to udp://HOST:PORT / tcp://HOST:PORT), otel "
                  "(GenAI execute_tool spans with a gen_ai.evaluation.result event per decision, to --otlp-endpoint).\n\n"
                  "Examples:\n\n"
                  "  caduceus audit export --format ocsf --tenant acme --since 24h -o acme.ocsf.jsonl\n\n"
                  "  caduceus audit export --format syslog --to tcp://siem.example:6514 --follow\n\n"
                  "  caduceus audit export --format otel --otlp-endpoint http://127.0.0.1:4318 --session SESSION")
def export(
    fmt: Annotated[ExportFormat, typer.Option("--format", "-f", help="Output format.")],
    tenant: TenantOption = None,
    session: Annotated[str | None, typer.Option(help="Only this chat session.")] = None,
    since: Annotated[str | None, typer.Option(help="From this time on (ISO 8601, or 30m, 12h, 7d back).")] = None,
    until: Annotated[str | None, typer.Option(help="Before this time (same forms as --since).")] = None,
    follow: Annotated[bool, typer.Option("--follow", help="Keep exporting new records until interrupted.")] = False,
    poll: Annotated[float, typer.Option(help="With --follow: seconds between looks for new records.")] = 1.0,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to append to (default: stdout).")] = None,
    to: Annotated[str | None, typer.Option(help="syslog: send to udp://HOST:PORT or tcp://HOST:PORT.")] = None,
    otlp_endpoint: Annotated[str | None, typer.Option(help="otel: the OTLP/HTTP endpoint (http://HOST:4318).",
                                                      envvar="OTEL_EXPORTER_OTLP_ENDPOINT")] = None,
    hostname: Annotated[str | None, typer.Option(help="syslog: HOSTNAME field (default: this host).")] = None,
    db: DbOption = None,
    state_dir: StateDirOption = None,
) -> None:
    if to is not None and fmt is not ExportFormat.syslog:
        fail("--to is for --format syslog; other formats go to stdout or --output")
    where = RecordFilter(tenant=tenant, session_id=session, since=parse_time(since, "--since") if since else None,
                         until=parse_time(until, "--until") if until else None)
    store = open_store(db, state_dir)
    sink, destination = _sink(fmt, to, otlp_endpoint, output)
    run = Export(store, where, Formatter(fmt.value, hostname=hostname), sink)
    stop = threading.Event()
    try:
        if follow:
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            err.print(f"following the audit trail into {destination} (Ctrl-C to stop)")
            try:
                guarded(lambda: run.follow(stop, poll))
            except KeyboardInterrupt:
                pass
        else:
            guarded(run.catch_up)
        run.finish()
    except DeliveryError as exc:
        fail(str(exc))
    err.print(f"exported {run.exported} records as {fmt.value} to {destination}")


def _sink(fmt: ExportFormat, to: str | None, otlp_endpoint: str | None, output: Path | None) -> tuple[Sink, str]:
    if fmt is ExportFormat.otel:
        if not otlp_endpoint:
            fail("--format otel needs --otlp-endpoint http://HOST:4318 (or OTEL_EXPORTER_OTLP_ENDPOINT)")
        return OtlpSink(otlp_endpoint), otlp_endpoint
    if to is not None:
        try:
            return SyslogSink(to), to
        except DeliveryError as exc:
            fail(str(exc))
    if output is not None:
        try:
            return LineSink(open(output, "a", encoding="utf-8"), owned=True), str(output)
        except OSError as exc:
            fail(f"cannot write {output}: {exc}")
    return LineSink(sys.stdout), "stdout"


# --- replay ---------------------------------------------------------------------------------------------------------


@app.command("replay", help="Decide recorded tool and model calls again with a candidate policy pack and list "
                            "every decision that would "
                  "change (recorded verdict and rules, new verdict and rules, why).\n\n"
                  "Calls are compared with what policy decided when they were recorded (not with a person's later "
                  "approval). Exit 0: no decision would change; 1: some would; 2: the pack or the store could not be "
                  "read.\n\n"
                  "Example: caduceus audit replay --pack new-policy.yaml --since 7d --tenant acme")
def replay_calls(
    pack: Annotated[Path, typer.Option(help="The candidate policy pack.")],
    since: Annotated[str | None, typer.Option(help="Only calls from this time on (ISO 8601, or 7d back).")] = None,
    tenant: TenantOption = None,
    workspaces_dir: Annotated[Path | None, typer.Option(
        help="Where tenant workspaces are, for path facts (default: <state dir>/workspaces, as policy uses).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the changed decisions as JSON.")] = False,
    db: DbOption = None,
    state_dir: StateDirOption = None,
) -> None:
    from caduceus_policy import decide_model_call, load_engine, request_facts

    try:
        engine = load_engine(pack)
    except (ValueError, OSError) as exc:
        fail(f"cannot load the policy pack {pack}: {exc}")
    workspaces = workspaces_dir or layout(state_dir).workspaces

    def decide(call: RecordedCall) -> Any:
        if call.tool == "model":  # a model call: the pack's routes and data rules, on the prompt as stored
            pack_of = getattr(engine, "pack", None)
            return decide_model_call(pack_of.tenants.get(call.tenant) if pack_of is not None else None,
                                     roles=call.roles, workspace=call.workspace, prompt=str(call.args.get("prompt")))
        # The request exactly as the policy service builds it: the workspace root <workspaces dir>/<tenant>/<workspace>,
        # and who asked, with the approval mode their grant carried.
        root = PurePosixPath(workspaces.absolute()) / call.tenant / call.workspace
        return engine.decide(request_facts(call.tenant, call.roles, call.tool, call.args, root, user=call.user,
                                           workspace=call.workspace, approval_mode=call.approval_mode))

    store = open_store(db, state_dir)
    start = parse_time(since, "--since") if since else None
    report = guarded(lambda: replay(recorded_calls(store, tenant=tenant, since=start, models=True), decide))
    version = str(getattr(engine, "version", "?"))
    if as_json:
        print(json.dumps({"pack": str(pack), "version": version, "replayed": report.replayed,
                          "undecided": report.undecided, "changed": [
                              {"call_id": c.call.call_id, "tenant": c.call.tenant, "session_id": c.call.session_id,
                               "user": c.call.user, "tool": c.call.tool, "args": c.call.args,
                               "occurred_at": c.call.occurred_at.isoformat(),
                               "recorded": {"verdict": c.call.policy_verdict, "policy_ids": list(c.call.policy_ids),
                                            "pack_version": c.call.pack_version},
                               "replayed": {"verdict": c.verdict, "policy_ids": list(c.policy_ids),
                                            "reason": c.reason},
                               **({"upstream": {"recorded": c.call.upstream, "replayed": c.upstream}}
                                  if c.call.tool == "model" else {})} for c in report.changed]}, indent=2))
    else:
        render_replay(console, report, str(pack), version)
    raise typer.Exit(BAD if report.changed else 0)


# --- timeline -------------------------------------------------------------------------------------------------------


@app.command(help="Tell what happened in one chat session or one trace, in order: who said what, each tool call "
                  "with its facts, decisions, approvals and result. In the terminal, or as one standalone HTML page "
                  "(--html) to attach to an incident report.\n\n"
                  "Example: caduceus audit timeline --session 3f2a... --html incident.html")
def timeline(
    session: Annotated[str | None, typer.Option(help="The chat session (`caduceus chat` prints it).")] = None,
    trace: Annotated[str | None, typer.Option(help="The trace id (32 hex digits).")] = None,
    tenant: TenantOption = None,
    html: Annotated[Path | None, typer.Option(help="Also write the timeline as a standalone HTML page here.")] = None,
    db: DbOption = None,
    state_dir: StateDirOption = None,
    as_json: AsJson = False,
) -> None:
    if (session is None) == (trace is None):
        fail("name exactly one of --session SESSION or --trace TRACE_ID")
    store = open_store(db, state_dir)
    where = RecordFilter(tenant=tenant, session_id=session, trace_id=trace.lower() if trace else None)
    title = f"Session {session}" if session else f"Trace {trace}"
    narrator = Narrator()
    told = guarded(lambda: build_timeline(title, (narrator.view(row) for row in store.stream(where))))
    if not told.records:
        fail(f"no audit records for {title.lower()}{f' of tenant {tenant}' if tenant else ''}: check the id "
             "(`caduceus chat` prints the session; traces are in your tracing backend)", BAD)
    if as_json:
        print_json(timeline_json(told))
    else:
        render_timeline(console, told)
    if html is not None:
        html.write_text(render_html(told), encoding="utf-8")
        err.print(f"wrote {html}")


# --- archive --------------------------------------------------------------------------------------------------------


@app.command(help="Move records older than --before out of the database into archive files, up to the last signed "
                  "checkpoint among them. The database's chain stays verifiable from that checkpoint, and each "
                  "archive verifies on its own (`caduceus audit verify --archive FILE`).\n\n"
                  "Example: caduceus audit archive --before 90d --to /srv/audit-archive")
def archive(
    before: Annotated[str, typer.Option(help="Archive records that occurred before this (ISO 8601, or 90d back).")],
    to: Annotated[Path, typer.Option(help="Directory for the archive files.")],
    tenant: TenantOption = None,
    keys_dir: Annotated[Path | None, typer.Option(help="Where audit.pub is (default: <state dir>/keys).")] = None,
    db: DbOption = None,
    state_dir: StateDirOption = None,
    as_json: AsJson = False,
) -> None:
    cutoff = parse_time(before, "--before")
    store = open_store(db, state_dir)
    keyring = load_keyring(keys_dir or layout(state_dir).keys)
    tenants = [tenant] if tenant else guarded(store.tenants)
    done: list[dict[str, Any]] = []
    for name in tenants:
        try:
            archived = guarded(lambda name=name: archive_before(store, keyring, name, cutoff, to))
        except (RetentionError, SignatureError) as exc:
            fail(f"{name}: {exc}", BAD)
        done.append({"tenant": name, "archived": archived is not None, **({"from_seq": archived.from_seq,
                     "through_seq": archived.through_seq, "location": archived.location, "sha256": archived.sha256}
                     if archived is not None else {})})
        if as_json:
            continue
        if archived is None:
            console.print(f"{name}: nothing to archive before {cutoff:%Y-%m-%d %H:%M} (no signed checkpoint covers "
                          "those records yet)")
        else:
            console.print(f"{name}: archived records {archived.from_seq}..{archived.through_seq} to "
                          f"{escape(archived.location)} (sha256 {archived.sha256})")
    if as_json:
        print_json({"before": cutoff.isoformat(), "to": str(to), "tenants": done})
