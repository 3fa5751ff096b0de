"""How `caduceus audit` shows its results in a terminal: verdicts, replay reports, incident timelines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from caduceus_audit import CallStory, ChainVerdict, Moment, ReplayReport, Timeline

VERDICT_STYLE = {"allow": "green", "deny": "red", "approve": "yellow"}
MAX_SHOWN = 600


def render_verdicts(console: Console, verdicts: Sequence[ChainVerdict], sources: Sequence[str]) -> None:
    """One line per tenant: intact with its counts, or its first bad record and what is wrong with it."""
    table = Table(show_header=True, header_style="bold", box=None)
    for column in ("", "tenant", "records", "checkpoints", "result"):
        table.add_column(column)
    for verdict in verdicts:
        mark = Text("✔", style="green") if verdict.ok else Text("✘", style="bold red")
        result = Text(verdict.reason) if verdict.ok else Text(
            f"record {verdict.first_bad_seq}: {verdict.problem} — {verdict.reason}", style="red")
        checkpoints = f"{verdict.checkpoints} (last {verdict.last_checkpoint_seq})" if verdict.checkpoints else "0"
        table.add_row(mark, verdict.tenant, str(verdict.records), checkpoints, result)
    console.print(table)
    console.print(f"[dim]checkpoints from: {escape(', '.join(sources))}[/dim]")


def render_replay(console: Console, report: ReplayReport, pack: str, version: str) -> None:
    console.print(f"replayed {report.replayed} recorded calls against {escape(pack)} (version {escape(version)})"
                  + (f"; {report.undecided} had no recorded policy decision" if report.undecided else ""))
    if not report.changed:
        console.print("[green]no decision would change[/green]")
        return
    table = Table(title=f"{len(report.changed)} decisions would change", header_style="bold")
    for column in ("when", "tenant", "user", "tool", "args", "recorded", "with this pack", "why"):
        table.add_column(column, overflow="fold")
    for change in report.changed:
        call = change.call
        recorded = f"{call.policy_verdict} {', '.join(call.policy_ids)}".strip()
        new = f"{change.verdict} {', '.join(change.policy_ids)}".strip()
        if call.tool == "model":  # where the call would go, beside where it went
            recorded += f" to {call.upstream or '-'}"
            new += f" to {change.upstream or '-'}"
        table.add_row(call.occurred_at.strftime("%Y-%m-%d %H:%M:%S"), call.tenant, call.user, call.tool,
                      _clip(json.dumps(call.args, ensure_ascii=False, sort_keys=True), 120),
                      Text(recorded, style=VERDICT_STYLE.get(call.policy_verdict or "", "")),
                      Text(new, style=VERDICT_STYLE.get(change.verdict, "")), change.reason)
    console.print(table)


def render_timeline(console: Console, timeline: Timeline) -> None:
    console.print(f"[bold]{escape(timeline.title)}[/bold]  [dim]{timeline.records} records · tenant "
                  f"{escape(', '.join(sorted(timeline.tenants)))} · session {escape(', '.join(sorted(timeline.sessions)))}"
                  f" · trace {escape(', '.join(sorted(timeline.traces)) or '-')}[/dim]")
    for moment in timeline.moments:
        console.print(_moment(moment))


def _clip(text: str, limit: int = MAX_SHOWN) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _moment(moment: Moment) -> Text | Panel:
    when = moment.at.strftime("%H:%M:%S.%f")[:-3]
    who = f"{moment.who.user} ({', '.join(moment.who.roles)})" if moment.who else ""
    if moment.call is None:
        style = {"warning": "yellow", "high": "red"}.get(moment.severity, "")
        line = Text(f"{when}  ", style="dim")
        line.append(_clip(moment.summary), style=style)
        return line
    return Panel(_call(moment.call), title=f"{when}  {who} asked for {moment.call.facts.tool}", title_align="left",
                 border_style={"warning": "yellow", "high": "red"}.get(moment.severity, "blue"))


def _call(story: CallStory) -> Group:
    facts = Table.grid(padding=(0, 2))
    facts.add_column(no_wrap=True)
    facts.add_column(overflow="fold")  # the call id and digest are copied into other commands: folded, never cut
    facts.add_row("call", story.call_id)
    facts.add_row("workspace", story.workspace or "-")
    facts.add_row("digest", story.facts.digest or "-")
    facts.add_row("args", _clip(json.dumps(story.facts.args, ensure_ascii=False, sort_keys=True)))
    lines: list[Text | Table] = [facts]
    for at, decision in story.decisions:
        line = Text(f"{at:%H:%M:%S}  ", style="dim")
        line.append(decision.verdict, style=VERDICT_STYLE.get(decision.verdict, ""))
        rules = f" [{', '.join(decision.policy_ids)}]" if decision.policy_ids else ""
        line.append(f" by {decision.decided_by}{rules}: {decision.reason}")
        lines.append(line)
    if not story.decisions:
        lines.append(Text("no decision recorded", style="yellow"))
    if story.dispatched_at is not None:
        lines.append(Text(f"{story.dispatched_at:%H:%M:%S}  dispatched to the executor", style="dim"))
    if story.completed_at is not None:
        result = Text(f"{story.completed_at:%H:%M:%S}  result {story.status}", style="dim")
        detail = story.reason or story.result
        result.append(f": {_clip(detail)}" if detail else "", style="")
        lines.append(result)
    else:
        lines.append(Text("not completed", style="yellow"))
    return Group(*lines)


def timeline_json(timeline: Timeline) -> dict[str, Any]:
    """The timeline for scripts: every moment with its call story, ids and results whole (nothing clipped)."""
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [plain(item) for item in value]
        if isinstance(value, set | frozenset):
            return sorted(plain(item) for item in value)
        if isinstance(value, datetime):
            return value.isoformat()
        return value

    return plain(asdict(timeline))
