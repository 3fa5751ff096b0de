"""`caduceus chat`: send one message as a person and print the agent's reply."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from caduceus.scripting import BAD, USAGE, AsJson, print_json, suggest
from caduceus.stackref import require_stack
from caduceus.transcript import render_call
from caduceus_client import ChatClient, ChatTimeout, TurnTranscript

console = Console()
err = Console(stderr=True, soft_wrap=True)


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
    as_json: AsJson = False,
) -> None:
    stack = require_stack(state_dir, err)
    if token is None:
        token = mint_token(stack.dev_issuer_url, tenant, user)
    try:
        transcript = asyncio.run(_send(stack.bus_settings("client"), tenant, token, text, session, workspace, channel,
                                       timeout, show_calls and not as_json, quiet=as_json))
    except ConnectionError as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        err.print(f"a stack left its details in {stack.state_dir} but its bus does not answer; if it stopped, start "
                  f"it again: {suggest('caduceus up', state_dir=state_dir)}", markup=False)
        raise typer.Exit(USAGE) from None
    reply = transcript.reply
    assert reply is not None
    if as_json:
        print_json(turn_json(transcript))
        raise typer.Exit(0 if reply.status == "ok" else BAD)
    for index, record in enumerate(transcript.calls.values(), start=1):
        console.print(render_call(index, record))
    if reply.status != "ok":
        err.print(f"[red]{reply.status}:[/red] {escape(reply.text)}")
        raise typer.Exit(BAD)
    console.print(reply.text, markup=False)
    again = suggest("caduceus chat", "...", tenant=None if tenant == "acme" else tenant,
                    user=None if user == "alice" else user, workspace=None if workspace == "default" else workspace,
                    channel=None if channel == "cli" else channel, state_dir=state_dir,
                    session=transcript.session_id)
    console.print(f"session {transcript.session_id} (continue with: {again})", style="dim", markup=False,
                  soft_wrap=True)


def turn_json(transcript: TurnTranscript) -> dict:
    """A chat turn for scripts: the session to continue, the reply, and every tool call with its decision."""
    reply = transcript.reply
    return {
        "tenant": transcript.tenant, "session_id": transcript.session_id,
        "reply": None if reply is None else {"status": reply.status, "text": reply.text},
        "calls": [{"call_id": call.call_id, "tool": call.tool, "args": call.args,
                   "decisions": [{"verdict": d.verdict, "reason": d.reason, "policy_ids": list(d.policy_ids),
                                  "pack_version": d.pack_version} for d in call.decisions],
                   "outcome": None if call.outcome is None else {"status": call.outcome.status,
                                                                  "executed_by": call.outcome.executed_by,
                                                                  "result": call.outcome.result,
                                                                  "reason": call.outcome.reason}}
                  for call in transcript.calls.values()],
        "notices": [notice.text for notice in transcript.notices],
    }


def mint_token(issuer_url: str, tenant: str, user: str) -> str:
    from caduceus_identity import mint_dev_token

    try:
        return mint_dev_token(issuer_url, tenant, user)
    except Exception as exc:
        err.print(f"[red]could not get a token for {user}@{tenant} from the dev issuer at {issuer_url}:[/red] "
                  f"{escape(str(exc))}")
        raise typer.Exit(USAGE) from None


async def _send(bus, tenant, token, text, session, workspace, channel, timeout, watch, *, quiet=False):
    client = await ChatClient.connect(bus)  # ConnectionError: the caller says how to start the stack
    # With --json, stdout holds the one document: notices go to stderr.
    shown = err if quiet else console
    try:
        return await client.send(tenant=tenant, token=token, text=text, session_id=session, workspace=workspace,
                                 channel=channel, timeout=timeout, watch=watch or quiet,
                                 on_notice=lambda notice: shown.print(f"[yellow]…[/yellow] {escape(notice.text)}"))
    except ChatTimeout as exc:
        # The services did not answer in time: the stack is not serving, which is exit 2 like an unreachable one.
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(USAGE) from None
    finally:
        await client.close()
