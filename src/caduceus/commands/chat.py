"""`caduceus chat`: send one message as a person and print the agent's reply."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from caduceus.stackref import require_stack
from caduceus.transcript import render_call
from caduceus_client import ChatClient, ChatTimeout

console = Console()
err = Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.command(help="Send a message as a user of a tenant and print the agent's reply.\n\n"
                     "Example: caduceus chat --tenant acme --user alice \"what is in my workspace?\"")(chat)


def chat(
    text: Annotated[str, typer.Argument(help="The message to send.")],
    tenant: Annotated[str, typer.Option(help="Tenant to speak in (demo: acme).")] = "acme",
    user: Annotated[str, typer.Option(help="User to speak as (demo: alice, bob, carol).")] = "alice",
    session: Annotated[str | None, typer.Option(help="Continue a conversation by its session id.")] = None,
    workspace: Annotated[str, typer.Option(help="Workspace of the tenant.")] = "default",
    channel: Annotated[str, typer.Option(help="Channel the message is in (a tenant with `memory: channel` keeps "
                                              "one memory per channel).")] = "cli",
    token: Annotated[str | None, typer.Option(help="An OIDC token to use instead of minting one from the dev issuer.",
                                              envvar="CADUCEUS_TOKEN")] = None,
    show_calls: Annotated[bool, typer.Option("--calls/--no-calls", help="Also print each tool call and its decision.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the reply.")] = 180.0,
    state_dir: Annotated[Path | None, typer.Option(help="State dir of the running stack.")] = None,
) -> None:
    stack = require_stack(state_dir, err)
    if token is None:
        token = mint_token(stack.dev_issuer_url, tenant, user)
    transcript = asyncio.run(_send(stack.bus_settings("client"), tenant, token, text, session, workspace, channel,
                                   timeout, show_calls))
    for index, record in enumerate(transcript.calls.values(), start=1):
        console.print(render_call(index, record))
    reply = transcript.reply
    assert reply is not None
    if reply.status != "ok":
        err.print(f"[red]{reply.status}:[/red] {reply.text}")
        raise typer.Exit(1)
    console.print(reply.text)
    console.print(f"[dim]session {transcript.session_id} (continue with --session {transcript.session_id})[/dim]")


def mint_token(issuer_url: str, tenant: str, user: str) -> str:
    from caduceus_identity import mint_dev_token

    try:
        return mint_dev_token(issuer_url, tenant, user)
    except Exception as exc:
        err.print(f"[red]could not get a token for {user}@{tenant} from the dev issuer at {issuer_url}:[/red] {exc}")
        raise typer.Exit(1) from None


async def _send(bus, tenant, token, text, session, workspace, channel, timeout, watch):
    try:
        client = await ChatClient.connect(bus)
    except ConnectionError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    try:
        return await client.send(tenant=tenant, token=token, text=text, session_id=session, workspace=workspace,
                                 channel=channel, timeout=timeout, watch=watch,
                                 on_notice=lambda notice: console.print(f"[yellow]…[/yellow] {escape(notice.text)}"))
    except ChatTimeout as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    finally:
        await client.close()
