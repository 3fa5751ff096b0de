"""An incident timeline (pure): a session's or a trace's records, in order, as what happened.

Who said what, and for each tool call one entry holding everything about it: who asked,
the facts of the call (tool, redacted arguments, digest, workspace), each decision with
who made it and why, whether it was dispatched, and its result.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from caduceus_audit.domain.narrative import Actor, CallFacts, DecisionFacts, RecordView

MomentKind = Literal["said", "replied", "call", "event", "refused"]


@dataclass
class CallStory:
    """Everything recorded about one tool call."""

    call_id: str
    facts: CallFacts
    asked_by: Actor | None
    workspace: str | None
    asked_at: datetime
    decisions: list[tuple[datetime, DecisionFacts]] = field(default_factory=list)
    dispatched_at: datetime | None = None
    completed_at: datetime | None = None
    status: str | None = None
    result: str = ""
    reason: str = ""

    @property
    def final_verdict(self) -> str | None:
        return self.decisions[-1][1].verdict if self.decisions else None


@dataclass
class Moment:
    at: datetime
    kind: MomentKind
    tenant: str
    summary: str
    who: Actor | None = None
    text: str | None = None
    call: CallStory | None = None
    seqs: list[int] = field(default_factory=list)
    severity: str = "info"


@dataclass
class Timeline:
    title: str
    moments: list[Moment] = field(default_factory=list)
    records: int = 0
    tenants: set[str] = field(default_factory=set)
    sessions: set[str] = field(default_factory=set)
    traces: set[str] = field(default_factory=set)

    @property
    def calls(self) -> list[CallStory]:
        return [moment.call for moment in self.moments if moment.call is not None]


def build_timeline(title: str, views: Iterable[RecordView]) -> Timeline:
    """The timeline of these records (in append order)."""
    timeline = Timeline(title)
    calls: dict[tuple[str, str], Moment] = {}
    for view in views:
        record = view.record
        timeline.records += 1
        timeline.tenants.add(record.tenant)
        if record.session_id:
            timeline.sessions.add(record.session_id)
        if record.trace_id:
            timeline.traces.add(record.trace_id)
        if view.call is not None and record.call_id and not record.rejected:
            _add_to_call(timeline, calls, view)
        else:
            timeline.moments.append(_moment(view))
    return timeline


def _moment(view: RecordView) -> Moment:
    record = view.record
    kind: MomentKind = {"chat.message.in": "said", "turn.requested": "said", "chat.reply": "replied"}.get(
        record.kind, "event")
    if record.rejected or record.kind == "error":
        kind = "refused"
    # A reply is the agent's: the person it answers is not its author.
    who = view.actor if kind == "said" else None
    return Moment(record.occurred_at, kind, record.tenant, view.summary, who=who, text=view.text, seqs=[record.seq],
                  severity=view.severity)


def _add_to_call(timeline: Timeline, calls: dict[tuple[str, str], Moment], view: RecordView) -> None:
    record = view.record
    assert view.call is not None and record.call_id is not None
    key = (record.tenant, record.call_id)
    moment = calls.get(key)
    if moment is None:
        story = CallStory(record.call_id, view.call, view.actor, view.workspace, record.occurred_at)
        moment = Moment(record.occurred_at, "call", record.tenant, view.summary, who=view.actor, call=story)
        calls[key] = moment
        timeline.moments.append(moment)
    story = moment.call
    assert story is not None
    moment.seqs.append(record.seq)
    if view.decision is not None:
        story.decisions.append((record.occurred_at, view.decision))
    elif record.kind == "tool.dispatched":
        story.dispatched_at = record.occurred_at
    elif record.kind == "tool.completed":
        body = view.body or {}
        story.completed_at, story.status = record.occurred_at, view.status
        story.result, story.reason = str(body.get("result", "")), str(body.get("reason", ""))
    if view.severity != "info":
        moment.severity = view.severity
