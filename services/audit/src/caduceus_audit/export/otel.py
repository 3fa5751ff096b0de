"""OpenTelemetry spans following the GenAI semantic conventions: an `execute_tool {tool}` span per tool call
and, under it, an `apply_guardrail` span per decision (policy's, then approval's).

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
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from caduceus_audit.domain.narrative import RecordView
from caduceus_audit.export import product_version

SCOPE = InstrumentationScope("caduceus-audit", product_version())
# The guardrail decision types of the GenAI security conventions; "approve" (a person must agree) is closest to
# "audit", and the span also says `caduceus.verdict`.
DECISION_TYPE = {"allow": "allow", "deny": "deny", "approve": "audit"}
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


@dataclass
class SpanBuilder:
    """Feed records in append order; get the spans each one completes."""

    resource: Resource = field(default_factory=lambda: Resource.create({"service.name": "caduceus-audit",
                                                                        "service.namespace": "caduceus"}))
    _open: dict[tuple[str, str], _OpenCall] = field(default_factory=dict)

    def feed(self, view: RecordView) -> list[ReadableSpan]:
        record = view.record
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
            return [self._guardrail(view, call)]
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
            "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": view.call.tool,
            "gen_ai.tool.call.id": record.call_id, "gen_ai.tool.type": "function",
            "gen_ai.tool.call.arguments": json.dumps(view.call.args, ensure_ascii=False, sort_keys=True),
            "caduceus.tenant": record.tenant,
        }
        if record.session_id:
            attributes["gen_ai.conversation.id"] = record.session_id
        if view.workspace:
            attributes["caduceus.workspace"] = view.workspace
        if view.actor is not None:
            attributes.update({"enduser.id": view.actor.user, "caduceus.roles": list(view.actor.roles)})
        call = _OpenCall(trace_id, _derived(16, "execute_tool", record.tenant, record.call_id), record.occurred_at,
                         attributes, record.occurred_at)
        self._open[(record.tenant, record.call_id)] = call
        return call

    def _context(self, trace_id: int, span_id: int) -> SpanContext:
        return SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))

    def _guardrail(self, view: RecordView, call: _OpenCall) -> ReadableSpan:
        record, decision = view.record, view.decision
        assert decision is not None and view.call is not None
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "apply_guardrail", "gen_ai.guardian.name": f"caduceus-{decision.decided_by}",
            "gen_ai.security.target.type": "tool_call", "gen_ai.security.target.id": record.call_id or "",
            "gen_ai.security.decision.type": DECISION_TYPE.get(decision.verdict, decision.verdict),
            "gen_ai.security.decision.reason": decision.reason, "caduceus.verdict": decision.verdict,
            "gen_ai.tool.name": view.call.tool, "gen_ai.tool.call.id": record.call_id or "",
            "caduceus.tenant": record.tenant,
        }
        if decision.policy_ids:
            attributes["gen_ai.security.policy.id"] = ",".join(decision.policy_ids)
        if decision.pack_version:
            attributes["gen_ai.security.policy.version"] = decision.pack_version
            attributes["gen_ai.guardian.version"] = decision.pack_version
        return ReadableSpan(
            name=f"apply_guardrail caduceus-{decision.decided_by} tool_call",
            context=self._context(call.trace_id, _derived(16, "apply_guardrail", record.event_id)),
            parent=self._context(call.trace_id, call.span_id), resource=self.resource, attributes=attributes,
            kind=SpanKind.INTERNAL, instrumentation_scope=SCOPE, status=Status(StatusCode.OK),
            start_time=_ns(call.started), end_time=_ns(record.occurred_at))

    def _execute_tool(self, call: _OpenCall, ended: datetime, view: RecordView | None) -> ReadableSpan:
        attributes = dict(call.attributes)
        status = Status(StatusCode.UNSET)
        if view is None:
            attributes["caduceus.outcome"] = "not completed"
        else:
            attributes["caduceus.outcome"] = view.status or "?"
            if view.text:
                attributes["gen_ai.tool.call.result"] = view.text[:MAX_RESULT]
            if view.status == "ok":
                status = Status(StatusCode.OK)
            else:
                attributes["error.type"] = view.status or "unknown"
                status = Status(StatusCode.ERROR, str((view.body or {}).get("reason") or view.status))
        return ReadableSpan(
            name=f"execute_tool {attributes['gen_ai.tool.name']}", context=self._context(call.trace_id, call.span_id),
            parent=None, resource=self.resource, attributes=attributes, kind=SpanKind.INTERNAL,
            instrumentation_scope=SCOPE, status=status, start_time=_ns(call.started), end_time=_ns(ended))
