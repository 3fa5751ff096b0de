"""OpenTelemetry spans following the published GenAI semantic conventions: an `execute_tool {tool}` span per tool
call, carrying a `gen_ai.evaluation.result` event per decision (policy's, then approval's) at the time it was made
(`caduceus_telemetry.genai` has the names and why).

Spans are rebuilt from the records, so they carry the recorded times and the trace id the
call travelled with (a record without one gets a trace id derived from its session), and
their span ids are derived from the call and decision, so exporting twice sends the same spans.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from caduceus_audit.domain.narrative import RecordView
from caduceus_audit.export import product_version
from caduceus_telemetry.genai import (
    ENDUSER_ID,
    ERROR_TYPE,
    EVALUATION_RESULT,
    GEN_AI_CONVERSATION_ID,
    GEN_AI_TOOL_CALL_ARGUMENTS,
    GEN_AI_TOOL_CALL_RESULT,
    GEN_AI_TOOL_NAME,
    decision_event,
    execute_tool_attributes,
    execute_tool_span_name,
)

SCOPE = InstrumentationScope("caduceus-audit", product_version())
MAX_RESULT = 4096
# Calls requested but not completed are held this many at most; the oldest is then sent as not completed.
MAX_OPEN_CALLS = 100_000


def _ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000_000)


def _derived(width: int, *parts: str) -> int:
    return int(hashlib.sha256("/".join(parts).encode()).hexdigest()[:width], 16) or 1


@dataclass
class _OpenCall:
    trace_id: int
    span_id: int
    started: datetime
    attributes: dict[str, Any]
    last_seen: datetime
    decisions: list[Event] = field(default_factory=list)


@dataclass
class SpanBuilder:
    """Feed records in append order; get the spans each one completes."""

    resource: Resource = field(default_factory=lambda: Resource.create({"service.name": "caduceus-audit",
                                                                        "service.namespace": "caduceus"}))
    _open: dict[tuple[str, str], _OpenCall] = field(default_factory=dict)

    def feed(self, view: RecordView) -> list[ReadableSpan]:
        record = view.record
        if record.kind.startswith("mcp.") and not record.rejected:
            return [self._mcp_event(view)]
        if view.call is None or record.call_id is None or record.rejected:
            return []
        key = (record.tenant, record.call_id)
        evicted = []
        if key not in self._open and len(self._open) >= MAX_OPEN_CALLS:
            oldest = self._open.pop(next(iter(self._open)))
            evicted.append(self._execute_tool(oldest, oldest.last_seen, None))
        call = self._open.get(key) or self._opened(view)
        call.last_seen = record.occurred_at
        return evicted + self._spans_for(view, key, call)

    def _spans_for(self, view: RecordView, key: tuple[str, str], call: _OpenCall) -> list[ReadableSpan]:
        record = view.record
        if record.kind == "tool.requested":
            call.started = record.occurred_at
            return []
        if view.decision is not None:
            decision = view.decision
            call.decisions.append(Event(EVALUATION_RESULT, decision_event(
                decision.decided_by, decision.verdict, decision.reason, decision.policy_ids, decision.pack_version),
                timestamp=_ns(record.occurred_at)))
            return []
        if record.kind == "tool.completed":
            self._open.pop(key, None)
            return [self._execute_tool(call, record.occurred_at, view)]
        return []

    def flush(self) -> list[ReadableSpan]:
        """The spans of calls that were requested but never completed (ended at their last record)."""
        spans = [self._execute_tool(call, call.last_seen, None) for call in self._open.values()]
        self._open.clear()
        return spans

    def _opened(self, view: RecordView) -> _OpenCall:
        record = view.record
        assert view.call is not None and record.call_id is not None
        trace_id = (int(record.trace_id, 16) if record.trace_id else
                    _derived(32, "session", record.tenant, record.session_id or record.call_id))
        attributes: dict[str, Any] = {
            **execute_tool_attributes(view.call.tool, record.call_id),
            GEN_AI_TOOL_CALL_ARGUMENTS: json.dumps(view.call.args, ensure_ascii=False, sort_keys=True),
            "caduceus.tenant": record.tenant,
        }
        if record.session_id:
            attributes[GEN_AI_CONVERSATION_ID] = record.session_id
        if view.workspace:
            attributes["caduceus.workspace"] = view.workspace
        if view.actor is not None:
            attributes.update({ENDUSER_ID: view.actor.user, "caduceus.roles": list(view.actor.roles)})
        call = _OpenCall(trace_id, _derived(16, "execute_tool", record.tenant, record.call_id), record.occurred_at,
                         attributes, record.occurred_at)
        self._open[(record.tenant, record.call_id)] = call
        return call

    def _mcp_event(self, view: RecordView) -> ReadableSpan:
        """The MCP gateway's registry, pin and definition events: one span each, named for the event and the
        server or tool, with the event's fields as `caduceus.mcp.*` attributes (credential names, never values)."""
        record = view.record
        attributes: dict[str, Any] = {"caduceus.tenant": record.tenant, "caduceus.event": record.kind,
                                      "caduceus.summary": view.summary, "caduceus.severity": view.severity}
        for key, value in (view.body or {}).items():
            if key in ("tenant", "kind", "event_id", "occurred_at", "schema_version"):
                continue
            if isinstance(value, list | tuple):
                attributes[f"caduceus.mcp.{key}"] = [str(v) for v in value]
            elif isinstance(value, str | int | float | bool):
                attributes[f"caduceus.mcp.{key}"] = value
        if view.actor is not None:
            attributes[ENDUSER_ID] = view.actor.user
        target = view.call.tool if view.call is not None else ""
        moment = _ns(record.occurred_at)
        return ReadableSpan(
            name=f"{record.kind} {target}".strip(),
            context=self._context(_derived(32, "mcp", record.tenant, record.event_id),
                                  _derived(16, "mcp-event", record.tenant, record.event_id)),
            parent=None, resource=self.resource, attributes=attributes, events=(), kind=SpanKind.INTERNAL,
            instrumentation_scope=SCOPE, status=Status(StatusCode.UNSET), start_time=moment, end_time=moment)

    def _context(self, trace_id: int, span_id: int) -> SpanContext:
        return SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))

    def _execute_tool(self, call: _OpenCall, ended: datetime, view: RecordView | None) -> ReadableSpan:
        attributes = dict(call.attributes)
        status = Status(StatusCode.UNSET)
        if view is None:
            attributes["caduceus.outcome"] = "not completed"
        else:
            attributes["caduceus.outcome"] = view.status or "?"
            if view.text:
                attributes[GEN_AI_TOOL_CALL_RESULT] = view.text[:MAX_RESULT]
            if view.status == "ok":
                status = Status(StatusCode.OK)
            else:
                attributes[ERROR_TYPE] = view.status or "unknown"
                status = Status(StatusCode.ERROR, str((view.body or {}).get("reason") or view.status))
        return ReadableSpan(
            name=execute_tool_span_name(attributes[GEN_AI_TOOL_NAME]), context=self._context(call.trace_id, call.span_id),
            parent=None, resource=self.resource, attributes=attributes, events=tuple(call.decisions),
            kind=SpanKind.INTERNAL, instrumentation_scope=SCOPE, status=status, start_time=_ns(call.started),
            end_time=_ns(ended))
