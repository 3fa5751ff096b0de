"""`caduceus mcp`: the MCP gateway's registry (servers per tenant), upstream credentials, and pinned definitions.

The registry is `mcp.yaml` in the state dir and the gateway reloads it when it changes (and audits every change
as an `mcp.server.changed` event); credentials are files only the gateway reads; pins are in the gateway's
database (SQLite in the state dir, or CADUCEUS_PINS_DB_URL): a revoked pin means the next call of that tool waits
for approval again, and the gateway audits the revocation.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from caduceus.identity_access import STATE_DIR_HELP
from caduceus.scripting import BAD, USAGE, AsJson, print_json
from caduceus_bus import default_state_dir
from caduceus_embedded import StateLayout
from caduceus_mcp import (
    McpSettings,
    Pin,
    PinStore,
    Registry,
    RegistryError,
    SecretStore,
    Server,
    load_registry,
    parse_registry,
    registration_warnings,
    sandbox_policies,
    save_registry,
)

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)

mcp_app = typer.Typer(help="The MCP gateway: upstream MCP servers per tenant, their credentials, pinned tool "
                           "definitions.", no_args_is_help=True)
servers_app = typer.Typer(help="MCP servers registered per tenant (mcp.yaml in the state dir; the gateway reloads "
                               "it and audits every change).", no_args_is_help=True)
pins_app = typer.Typer(help="Approved (pinned) tool definitions: a tool runs without asking only while the "
                            "upstream serves exactly its pinned definition.", no_args_is_help=True)
secrets_app = typer.Typer(help="Upstream credentials, read only by the gateway (never the agent, the bus or the "
                               "audit trail).", no_args_is_help=True)
mcp_app.add_typer(servers_app, name="servers")
mcp_app.add_typer(pins_app, name="pins")
mcp_app.add_typer(secrets_app, name="secrets")

StateDir = Annotated[Path | None, typer.Option("--state-dir", help=STATE_DIR_HELP)]
Tenant = Annotated[str, typer.Argument(help="The tenant, e.g. acme.")]
ServerName = Annotated[str, typer.Argument(help="The server's name: tools are called mcp__<server>__<tool>.")]


def register(app: typer.Typer) -> None:
    app.add_typer(mcp_app, name="mcp")


def _settings(state_dir: Path | None) -> McpSettings:
    settings = McpSettings(state_dir=state_dir or default_state_dir())
    database = StateLayout(settings.state_dir).database_url  # the stack keeps every store in PostgreSQL
    if database and not settings.pins_db_url:
        return settings.model_copy(update={"pins_db_url": database})
    return settings


def _registry(settings: McpSettings) -> Registry:
    try:
        return load_registry(settings.registry_file)
    except RegistryError as exc:
        err.print(f"[red]{escape(str(exc))}[/red]\nfix the file first (every problem is listed with its line)")
        raise typer.Exit(BAD) from None


def server_json(server: Server) -> dict:
    return {"tenant": server.tenant, "name": server.name, "transport": server.transport, "target": server.target,
            "scope": server.scope, "approvers": server.approvers, "pin": server.pin_scope,
            "credentials": list(server.credentials.secret_names()), "timeout_s": server.timeout_s,
            "max_result_bytes": server.max_result_bytes}


def _pairs(values: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, ref = value.partition("=")
        if not sep or not name or not ref:
            err.print(f"[red]{what} {value!r} is not NAME=VALUE[/red]")
            raise typer.Exit(USAGE)
        pairs[name] = ref
    return pairs


@servers_app.command("add")
def add(tenant: Tenant, name: ServerName,
        command: Annotated[str | None, typer.Option(help="A stdio server: the command line the gateway runs "
                                                         "(in a sandbox), e.g. 'python -m files_server'.")] = None,
        url: Annotated[str | None, typer.Option(help="A streamable HTTP server: its URL, reached through the "
                                                     "tenant's egress rules (its sandbox policy's network.allow); "
                                                     "a warning says when they refuse it.")] = None,
        workspace: Annotated[list[str] | None, typer.Option(help="Only for this workspace (repeat); default: the "
                                                                  "whole tenant.")] = None,
        approvers: Annotated[str, typer.Option(help="The group that approves first use and changed "
                                                    "definitions.")] = "admin",
        pin: Annotated[str, typer.Option(help="Pin approved definitions per tenant or per workspace.")] = "tenant",
        env_secret: Annotated[list[str] | None, typer.Option(help="VAR=secret: an environment variable of a stdio "
                                                                   "server, from the secret store (repeat).")] = None,
        header_secret: Annotated[list[str] | None, typer.Option(help="'Header=Bearer {secret}': an HTTP header "
                                                                      "with a secret (repeat).")] = None,
        timeout: Annotated[float | None, typer.Option(help="Seconds a call may take.")] = None,
        state_dir: StateDir = None, as_json: AsJson = False) -> None:
    """Register (or replace) a server for a tenant; the gateway picks it up without a restart."""
    settings = _settings(state_dir)
    registry = _registry(settings)
    entry: dict = {"scope": {"workspaces": workspace} if workspace else "tenant", "approvers": approvers, "pin": pin}
    if command is not None:
        entry["command"] = command.split()
    if url is not None:
        entry["url"] = url
    creds = {k: v for k, v in (("env", _pairs(env_secret or [], "--env-secret")),
                               ("headers", _pairs(header_secret or [], "--header-secret"))) if v}
    if creds:
        entry["credentials"] = creds
    if timeout is not None:
        entry["timeout_s"] = timeout
    import yaml
    text = yaml.safe_dump({"tenants": {tenant: {"servers": {name: entry}}}}, sort_keys=False)
    try:
        server = parse_registry(text, "the new server").server(tenant, name)
    except RegistryError as exc:
        for problem in exc.problems:
            err.print(f"[red]{escape(re.sub(r'^line [0-9]+: ', '', problem))}[/red]")
        raise typer.Exit(BAD) from None
    assert server is not None
    replaced = registry.server(tenant, name) is not None
    save_registry(settings.registry_file, registry.with_server(server))
    warnings = registration_warnings(sandbox_policies(settings), server)
    if as_json:
        print_json({"ok": True, "replaced": replaced, "server": server_json(server), "warnings": warnings})
        return
    out.print(f"{'replaced' if replaced else 'added'} MCP server {name} for {tenant} ({server.transport}: "
              f"{escape(server.target)}, {server.scope}); its tools are mcp__{name}__<tool>, each waiting for "
              f"{server.approvers}'s approval on first use")
    for warning in warnings:
        err.print(f"[yellow]warning: {escape(warning)}[/yellow]")
    missing = [s for s in server.credentials.secret_names()
               if not (settings.secrets_dir / tenant / s).exists()]
    for secret in missing:
        out.print(f"  store its credential: caduceus mcp secrets set {tenant} {secret} < token-file")


@servers_app.command("list")
def list_servers(tenant: Annotated[str | None, typer.Argument(help="Only this tenant.")] = None,
                 state_dir: StateDir = None, as_json: AsJson = False) -> None:
    """One line per registered server."""
    registry = _registry(_settings(state_dir))
    servers = [s for t, named in sorted(registry.servers.items()) if tenant in (None, t)
               for _, s in sorted(named.items())]
    if as_json:
        print_json({"servers": [server_json(s) for s in servers]})
        return
    table = Table(show_edge=False)
    for column in ("tenant", "server", "transport", "target", "scope", "approvers", "credentials"):
        table.add_column(column)
    for s in servers:
        table.add_row(s.tenant, s.name, s.transport, escape(s.target), s.scope, s.approvers,
                      ", ".join(s.credentials.secret_names()))
    out.print(table if servers else "no MCP servers registered")


@servers_app.command("show")
def show(tenant: Tenant, name: ServerName, state_dir: StateDir = None, as_json: AsJson = False) -> None:
    """Everything about one server (credentials by name only) and its pinned tools."""
    settings = _settings(state_dir)
    server = _registry(settings).server(tenant, name)
    if server is None:
        err.print(f"[red]no MCP server {name!r} for {tenant}[/red] (see `caduceus mcp servers list`)")
        raise typer.Exit(BAD)
    pins = _pins(settings).list(tenant, server=name)
    if as_json:
        print_json({"server": server_json(server), "pins": [p.as_json() for p in pins]})
        return
    for key, value in server_json(server).items():
        out.print(f"{key}: {escape(str(value))}")
    out.print(f"pinned tools: {', '.join(p.tool for p in pins) or 'none yet'}")


@servers_app.command("remove")
def remove(tenant: Tenant, name: ServerName, state_dir: StateDir = None, as_json: AsJson = False) -> None:
    """Unregister a server: its tools disappear from every planner's list and their calls are denied."""
    settings = _settings(state_dir)
    registry = _registry(settings)
    if registry.server(tenant, name) is None:
        err.print(f"[red]no MCP server {name!r} for {tenant}[/red]")
        raise typer.Exit(BAD)
    save_registry(settings.registry_file, registry.without_server(tenant, name))
    if as_json:
        print_json({"ok": True, "removed": {"tenant": tenant, "name": name}})
        return
    out.print(f"removed MCP server {name} from {tenant} (its pins stay until revoked: caduceus mcp pins revoke "
              f"{tenant} {name})")


@secrets_app.command("set")
def set_secret(tenant: Tenant, name: Annotated[str, typer.Argument(help="The secret's name, as the registry "
                                                                         "refers to it.")],
               state_dir: StateDir = None, as_json: AsJson = False) -> None:
    """Store a credential from standard input (never an argument: it would stay in the shell's history)."""
    value = sys.stdin.read().strip()
    if not value:
        err.print("[red]no value on standard input[/red]: caduceus mcp secrets set TENANT NAME < file")
        raise typer.Exit(USAGE)
    path = SecretStore(_settings(state_dir).secrets_dir).write(tenant, name, value)
    if as_json:
        print_json({"ok": True, "tenant": tenant, "name": name, "path": str(path)})
        return
    out.print(f"stored {name} for {tenant} in {path} (mode 0600; only the gateway reads it)")


def _pins(settings: McpSettings) -> PinStore:
    try:
        return PinStore(settings.pins_url)
    except Exception as exc:
        err.print(f"[red]the pins database cannot be opened: {escape(str(exc)[:300])}[/red]")
        raise typer.Exit(USAGE) from None


def _pin_row(p: Pin) -> list[str]:
    return [p.tenant, p.workspace or "(tenant)", p.server, p.tool, p.digest, p.approved_by,
            p.pinned_at.isoformat(timespec="seconds")]


@pins_app.command("list")
def list_pins(tenant: Annotated[str | None, typer.Argument(help="Only this tenant.")] = None,
              state_dir: StateDir = None, as_json: AsJson = False) -> None:
    """Every pinned definition: which tool, for whom, its digest, who approved it and when."""
    pins = _pins(_settings(state_dir)).list(tenant)
    if as_json:
        print_json({"pins": [p.as_json() for p in pins]})
        return
    table = Table(show_edge=False)
    for column in ("tenant", "workspace", "server", "tool", "digest", "approved by", "pinned at"):
        table.add_column(column)
    for p in pins:
        table.add_row(*(escape(c) for c in _pin_row(p)))
    out.print(table if pins else "no pinned definitions")


@pins_app.command("show")
def show_pin(tenant: Tenant, server: ServerName, tool: Annotated[str, typer.Argument(help="The upstream tool.")],
             workspace: Annotated[str, typer.Option(help="For a server pinned per workspace.")] = "",
             state_dir: StateDir = None, as_json: AsJson = False) -> None:
    """One pinned definition in full (what the approver approved)."""
    pin = _pins(_settings(state_dir)).get(tenant, workspace, server, tool)
    if pin is None:
        err.print(f"[red]no pin for {server}/{tool} in {tenant}{'/' + workspace if workspace else ''}[/red]")
        raise typer.Exit(BAD)
    if as_json:
        print_json({"pin": pin.as_json()})
        return
    import json
    out.print(f"{tenant} {server}/{tool} pinned by {pin.approved_by} at {pin.pinned_at.isoformat(timespec='seconds')}")
    out.print(f"digest {pin.digest}")
    out.print(escape(json.dumps(pin.definition, indent=2, sort_keys=True)))


@pins_app.command("revoke")
def revoke(tenant: Tenant, server: ServerName,
           tool: Annotated[str | None, typer.Argument(help="One tool; default: every tool of the server.")] = None,
           workspace: Annotated[str | None, typer.Option(help="Only the pins of this workspace.")] = None,
           state_dir: StateDir = None, as_json: AsJson = False) -> None:
    """Revoke pins: the next call of each tool waits for approval again. The gateway audits each revocation."""
    removed = _pins(_settings(state_dir)).revoke(tenant, server, tool, workspace, actor=_actor())
    if as_json:
        print_json({"ok": bool(removed), "revoked": [p.as_json() for p in removed]})
    else:
        for p in removed:
            out.print(f"revoked {p.server}/{p.tool} for {p.tenant}{'/' + p.workspace if p.workspace else ''}")
        if not removed:
            err.print(f"[red]no pin of {server}{'/' + tool if tool else ''} in {tenant}[/red]")
    if not removed:
        raise typer.Exit(BAD)


def _actor() -> str:
    import getpass
    try:
        return f"operator:{getpass.getuser()}"
    except Exception:
        return "operator"

