"""`caduceus demo`: one governed chat turn through real Hermes Agent, shown as a transcript.

alice@acme asks the agent to check the workspace and leave a note outside it.
The agent asks for two tool calls: `terminal` is allowed by policy and runs in
the executor; `write_file` outside the workspace is denied and never runs.
The demo checks every step and exits non-zero if any did not happen.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from caduceus.commands.chat import mint_token
from caduceus.transcript import render_transcript, tool_output
from caduceus_client import ChatClient, TurnTranscript
from caduceus_client.chat import ChatTimeout
from caduceus_embedded.stackinfo import StackInfo, default_state_dir, read_stack_info

console = Console()
err = Console(stderr=True)

TENANT, USER = "acme", "alice"
DEMO_MESSAGE = "Please check the workspace and leave a note in /etc/caduceus-demo.txt"
OUTSIDE_PATH = Path("/etc/caduceus-demo.txt")


@dataclass
class Check:
    what: str
    ok: bool
    detail: str = ""


def register(app: typer.Typer) -> None:
    app.command(help="Run the embedded stack (if none runs) and play one governed turn: alice@acme's agent runs an "
                     "allowed terminal call in the executor, and a write outside the workspace is denied.")(demo)


def demo(
    state_dir: Annotated[Path | None, typer.Option(help="State dir (default: the user's data dir, or "
                                                        "CADUCEUS_STATE_DIR).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the agent's reply.")] = 180.0,
) -> None:
    state_dir = state_dir or default_state_dir()
    with ExitStack() as stack_scope:
        info = read_stack_info(state_dir)
        if info is not None:
            console.print(f"[dim]using the stack already running in {state_dir}[/dim]")
        else:
            info = _start_stack(state_dir, stack_scope)
        existed_before = OUTSIDE_PATH.exists()
        token = mint_token(info.dev_issuer_url, TENANT, USER)
        transcript = _play(info, token, timeout)
        render_transcript(console, transcript, USER)
        audited = _wait_for_audit(info, transcript)
        console.print(f"audit: [bold]{audited}[/bold] records stored for session {transcript.session_id} "
                      f"({len(transcript.event_ids)} events seen on the bus)")
        checks = evaluate(transcript, audited, outside_written=OUTSIDE_PATH.exists() and not existed_before)
    console.print()
    for check in checks:
        mark = "[green]✓[/green]" if check.ok else "[red]✗[/red]"
        console.print(f"{mark} {check.what}" + (f"  [dim]{check.detail}[/dim]" if check.detail else ""))
    failed = [c for c in checks if not c.ok]
    if failed:
        err.print(f"[red]demo failed: {len(failed)} expected step(s) did not happen[/red]")
        raise typer.Exit(1)
    console.print("[green]demo passed[/green]: every step happened as governed")


def _start_stack(state_dir: Path, scope: ExitStack) -> StackInfo:
    from caduceus_embedded.binaries import MissingBinary
    from caduceus_embedded.ports import PortBusy
    from caduceus_embedded.servers import ServerFailed
    from caduceus_embedded.services import ServiceFailed
    from caduceus_embedded.stack import EmbeddedStack, StackAlreadyRunning

    console.print(f"starting the embedded stack in {state_dir}")
    stack = EmbeddedStack(state_dir, on_progress=lambda line: console.print(f"  {line}", style="dim", markup=False),
                          on_problem=lambda line: err.print(line, style="yellow", markup=False))
    try:
        stack.start()
    except (PortBusy, MissingBinary, ServiceFailed, ServerFailed, StackAlreadyRunning) as exc:
        err.print(f"error: {str(exc).splitlines()[0]}", style="red", markup=False)
        raise typer.Exit(2) from None
    scope.callback(stack.stop)
    return stack.info


def _play(info: StackInfo, token: str, timeout: float) -> TurnTranscript:
    async def run() -> TurnTranscript:
        client = await ChatClient.connect(info.bus_settings("client"))
        try:
            return await client.send(tenant=TENANT, token=token, text=DEMO_MESSAGE, timeout=timeout, watch=True)
        finally:
            await client.close()

    try:
        return asyncio.run(run())
    except (ChatTimeout, ConnectionError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None


def _wait_for_audit(info: StackInfo, transcript: TurnTranscript, timeout: float = 15.0) -> int:
    """Records the audit service stored for the session, once it has caught up with what we saw."""
    from caduceus_audit.adapters.store import AuditStore

    store = AuditStore(info.audit_db_url)
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        count = store.count(tenant=TENANT, session_id=transcript.session_id)
        if count >= len(transcript.event_ids):
            break
        time.sleep(0.2)
    return count


def evaluate(transcript: TurnTranscript, audited: int, *, outside_written: bool) -> list[Check]:
    """The steps the demo promises, each checked against what actually happened."""
    calls = list(transcript.calls.values())
    terminal = next((c for c in calls if c.tool == "terminal"), None)
    write = next((c for c in calls if c.tool == "write_file"), None)
    reply = transcript.reply
    return [
        Check("alice@acme's message got a reply", reply is not None and reply.status == "ok",
              "" if reply is None else reply.status),
        Check("the agent asked for a terminal call, policy allowed it",
              terminal is not None and terminal.decision is not None and terminal.decision.verdict == "allow"),
        Check("the terminal call ran in the executor process",
              terminal is not None and terminal.outcome is not None and terminal.outcome.status == "ok"
              and bool(terminal.outcome.executed_by) and "hello from the executor" in tool_output(terminal)),
        Check("the agent asked to write outside the workspace, policy denied it",
              write is not None and write.decision is not None and write.decision.verdict == "deny"),
        Check("the denied write never ran",
              write is not None and write.outcome is not None and write.outcome.status == "denied"
              and not write.outcome.executed_by and not outside_written, str(OUTSIDE_PATH)),
        Check("the audit service stored every event of the turn", audited >= len(transcript.event_ids),
              f"{audited} stored / {len(transcript.event_ids)} seen"),
    ]
