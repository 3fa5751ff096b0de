"""`caduceus up`: run the embedded stack in the foreground until Ctrl-C or SIGTERM; `caduceus status`: what it
says about its services (exit 0 all up, 1 one was left down after a crash loop, 2 no stack runs there)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from caduceus.scripting import BAD, USAGE, AsJson, print_json, suggest
from caduceus_embedded import (
    EmbeddedStack,
    MissingBinary,
    PortBusy,
    ServerFailed,
    ServiceFailed,
    StackAlreadyRunning,
    StackPorts,
    default_state_dir,
    read_stack_info,
)
from caduceus_embedded.ports import SERVICE_HTTP_ORDER

DEFAULTS = StackPorts()

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)


def register(app: typer.Typer) -> None:
    app.command(name="up")(up)
    app.command(name="status")(status)


def up(
    state_dir: Annotated[Path | None, typer.Option(
        help="Where the stack keeps its data (JetStream, Temporal, audit, keys, logs). "
             "Default: $CADUCEUS_STATE_DIR or the user data dir.")] = None,
    nats_port: Annotated[int, typer.Option(help="NATS client port.")] = DEFAULTS.nats,
    temporal_port: Annotated[int, typer.Option(help="Temporal gRPC port.")] = DEFAULTS.temporal,
    temporal_ui_port: Annotated[int, typer.Option(help="Temporal Web UI port.")] = DEFAULTS.temporal_ui,
    issuer_port: Annotated[int, typer.Option(help="Dev OIDC issuer port.")] = DEFAULTS.issuer,
    model_port: Annotated[int, typer.Option(help="Scripted model port (unused when "
                                                 "CADUCEUS_MODEL_BASE_URL is set).")] = DEFAULTS.model,
    approval_ui_port: Annotated[int, typer.Option(help="Approvals web UI port (approvers sign in there).")]
    = DEFAULTS.approval_ui,
    webchat_port: Annotated[int, typer.Option(help="Web chat port (people sign in and chat with the agent there).")]
    = DEFAULTS.webchat,
    mcp_port: Annotated[int, typer.Option(help="The MCP endpoint for other MCP clients (the MCP gateway's).")]
    = DEFAULTS.mcp_endpoint,
    inference_port: Annotated[int, typer.Option(help="Inference gateway port: the planners' only way to a model "
                                                     "(OpenAI-compatible /v1).")] = DEFAULTS.inference,
    http_port: Annotated[int, typer.Option(help=f"The first of {len(SERVICE_HTTP_ORDER)} ports "
                                                f"({', '.join(SERVICE_HTTP_ORDER)}) where each service serves "
                                                "/healthz, /readyz and "
                                                "Prometheus /metrics.")] = DEFAULTS.http,
    replicas: Annotated[int, typer.Option(min=1, max=8, help=(
        "Processes of each service (identity, policy, approval, audit, broker, gateway, mcp, inference), on the "
        "one bus and the one store: kill one and the others keep answering (each workspace's planner runs at one "
        "broker at a time, the holder of its lease). Each replica gets its own health port (replica n uses the "
        "n-th block of ports from --http-port) and they share the web ports."))] = 1,
    nats_nodes: Annotated[int, typer.Option(min=1, max=5, help=(
        "nats-servers in a cluster on loopback: node 1 on --nats-port, the others on free ports; the event stream "
        "and the KV buckets are kept on up to 3 of them, so one node can be lost with nothing lost. Every service "
        "is given every node's URL."))] = 1,
    database_url: Annotated[str | None, typer.Option(metavar="URL", help=(
        "A PostgreSQL database (postgresql+psycopg2://user:pass@host:5432/db) for every store instead of SQLite "
        "files in the state dir: the audit chains, identity's records, the web chat's conversations, the MCP "
        "pins (Temporal keeps its own SQLite). Checked before anything starts, and kept in <state-dir>/database.url "
        "(0600) so later commands and `caduceus up` on that state dir use it too."))] = None,
) -> None:
    """Start NATS, Temporal, the model and every Caduceus service here; keep them up until Ctrl-C.

    With --replicas 2, every service runs twice; `caduceus status` lists each replica. With --nats-nodes 3, the
    bus is a cluster of three nats-servers. With --database-url, every store is in one PostgreSQL database.
    Together they are the highly available layout on one machine.
    """
    ports = StackPorts(nats=nats_port, temporal=temporal_port, temporal_ui=temporal_ui_port, issuer=issuer_port,
                       model=model_port, approval_ui=approval_ui_port, webchat=webchat_port,
                       mcp_endpoint=mcp_port, inference=inference_port, http=http_port)
    stack = EmbeddedStack(state_dir or default_state_dir(), ports, replicas=replicas, nats_nodes=nats_nodes,
                          database_url=database_url, on_progress=lambda line: out.print(f"  {escape(line)}", style="dim"),
                          on_problem=lambda line: err.print(escape(line), style="yellow"))
    _stop_on(signal.SIGINT, signal.SIGTERM)
    out.print("starting the Caduceus embedded stack")
    try:
        stack.start()
    except (StackAlreadyRunning, PortBusy, MissingBinary) as exc:
        err.print(f"error: {escape(str(exc))}", style="red")
        raise typer.Exit(2) from None
    except ServiceFailed as exc:
        err.print(f"error: {escape(exc.summary)}", style="red")
        _print_tail(str(exc).splitlines()[1:], exc.log_path)
        raise typer.Exit(2) from None
    except ServerFailed as exc:
        first, *rest = str(exc).splitlines()
        err.print(f"error: {escape(first)}", style="red")
        _print_tail(rest, None)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err.print("interrupted while starting; stopped")
        raise typer.Exit(130) from None
    try:
        _show(stack, state_dir)  # a Ctrl-C from here on, even while this prints, stops the stack
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        # A second Ctrl-C must not cut the shutdown short and leave children running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        out.print("stopping…")
        stack.stop()
    out.print("stopped")


def _stop_on(*signums: int) -> None:
    """Stop on Ctrl-C and on SIGTERM (a service manager), even when started with SIGINT ignored (`cmd &`)."""
    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    for signum in signums:
        signal.signal(signum, interrupt)


def _print_tail(lines: list[str], log_path: Path | None) -> None:
    if not lines:
        return
    err.print(f"last lines of {log_path}:" if log_path else "last lines of its log:", style="dim")
    for line in lines:
        err.print(f"  {escape(line)}", style="dim")


def _show(stack: EmbeddedStack, state_dir: Path | None) -> None:
    info = stack.info
    services = Table(title="Caduceus is up", title_justify="left", show_edge=False)
    services.add_column("service")
    services.add_column("pid", justify="right")
    services.add_column("url")
    services.add_column("health and metrics")
    for name, running in stack.services.items():
        metrics = running.spec.metrics_url
        services.add_row(name, str(running.pid), running.spec.url or "", f"{metrics}/readyz, /metrics" if metrics else "")
    out.print(services)
    where = Table.grid(padding=(0, 2))
    model_source = "scripted model" if stack.model_is_scripted else "CADUCEUS_MODEL_BASE_URL"
    for label, value in [
        ("NATS", info.nats_url),
        ("bus credentials", f"{stack.layout.bus_keys} (chat clients use client.creds)"),
        ("Temporal", info.temporal_address),
        ("Temporal Web UI", info.temporal_ui_url),
        ("dev issuer", info.dev_issuer_url),
        ("approvals UI", f"{info.approval_ui_url} (sign in as an approver, e.g. carol@acme)"),
        ("web chat", f"{info.webchat_url} (sign in and chat, e.g. as alice@acme)"),
        ("model endpoint", f"{info.model_base_url} ({model_source}, model {stack.model.name})"),
        ("stores", f"PostgreSQL {info.database}" if info.database else f"SQLite files in {info.state_dir}"),
        ("state dir", info.state_dir),
        ("logs", str(stack.layout.logs)),
    ]:
        where.add_row(label, escape(value))
    out.print(where)
    # The stack's ports are in its state dir: the state dir is all a later command needs to find it.
    hint = suggest("caduceus chat", "hello", tenant="acme", user="alice", state_dir=state_dir)
    out.print(f"\ntry: [bold]{escape(hint)}[/]\nCtrl-C stops everything.")


def status(
    state_dir: Annotated[Path | None, typer.Option(
        help="State dir of the stack (default: $CADUCEUS_STATE_DIR or the user data dir).")] = None,
    as_json: AsJson = False,
) -> None:
    """Show each service of the running stack, and every service it left down after a crash loop (exit 1)."""
    root = state_dir or default_state_dir()
    info = read_stack_info(root)
    if info is None:
        err.print(f"no stack runs in {escape(str(root))}: start one with `{escape(suggest('caduceus up', state_dir=state_dir))}` "
                  "(or pass --state-dir DIR where one runs)", style="red")
        raise typer.Exit(USAGE)
    if as_json:
        print_json({"state_dir": str(root), "ok": not info.down, "nats": info.nats_url.split(","),
                    "database": info.database or "sqlite", "services": [
            {"name": name, "pid": pid, "up": name not in info.down, "problem": info.down.get(name)}
            for name, pid in info.services.items()]})
        raise typer.Exit(BAD if info.down else 0)
    table = Table(show_edge=False)
    for column in ("service", "pid", "state"):
        table.add_column(column)
    for name, pid in info.services.items():
        problem = info.down.get(name)
        table.add_row(name, str(pid), f"[bold red]DOWN[/] {escape(problem)}" if problem else "[green]up[/]")
    out.print(table)
    if info.down:
        out.print(f"[bold red]{len(info.down)} service(s) down[/]: read the named log, fix the cause, then restart "
                  f"the stack (`{escape(suggest('caduceus up', state_dir=state_dir))}`)")
        raise typer.Exit(BAD)
