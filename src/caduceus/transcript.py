"""Rendering a chat turn for people: the message, each tool call with its decision and outcome, the reply."""

from __future__ import annotations

import json

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from caduceus_client import ToolCallRecord, TurnTranscript

VERDICT_STYLE = {"allow": "green", "deny": "red", "approve": "yellow"}
STATUS_STYLE = {"ok": "green", "error": "red", "denied": "red", "refused": "red"}


def _short(value: str, limit: int = 400) -> str:
    value = value.strip()
    return value if len(value) <= limit else value[:limit] + " …"


def tool_output(record: ToolCallRecord) -> str:
    """The readable part of a tool's JSON result (terminal output, file tool content), else the raw result."""
    if record.outcome is None:
        return ""
    raw = record.outcome.result or record.outcome.reason
    try:
        data = json.loads(raw)
    except (ValueError, TypeError):
        return raw
    if isinstance(data, dict):
        for key in ("output", "content", "error", "message"):
            if isinstance(data.get(key), str):
                return data[key]
    return raw


def render_call(index: int, record: ToolCallRecord) -> Table:
    table = Table.grid(padding=(0, 1))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    table.add_row(f"tool call {index}", Text(f"{record.tool} {json.dumps(record.args, ensure_ascii=False)}"))
    decision = record.decision
    if decision is None:
        table.add_row("decision", Text("none received", style="red"))
    else:
        rules = ", ".join(decision.policy_ids) or "no rule"
        table.add_row("decision", Text.assemble((decision.verdict.upper(), VERDICT_STYLE.get(decision.verdict, "")),
                                                f"  {decision.reason}  [{rules}; pack {decision.pack_version or '-'}]"))
    outcome = record.outcome
    if outcome is None:
        table.add_row("result", Text("no outcome received", style="red"))
    else:
        where = f" (ran in {outcome.executed_by})" if outcome.executed_by else " (nothing ran)"
        table.add_row("result", Text.assemble((outcome.status, STATUS_STYLE.get(outcome.status, "")), where))
        table.add_row("", Text(_short(tool_output(record)), style="dim"))
    return table


def render_transcript(console: Console, transcript: TurnTranscript, user: str) -> None:
    console.print(Panel(transcript.message.text, title=f"{user}@{transcript.tenant} says",
                        subtitle=f"session {transcript.session_id}", title_align="left"))
    for index, record in enumerate(transcript.calls.values(), start=1):
        console.print(render_call(index, record))
        console.print()
    for notice in transcript.notices:
        console.print(Text.assemble(("notice ", "bold yellow"), notice.text))
    reply = transcript.reply
    if reply is not None:
        style = "green" if reply.status == "ok" else "red"
        console.print(Panel(reply.text or "(empty reply)", title=f"agent replies ({reply.status})",
                            title_align="left", border_style=style))
