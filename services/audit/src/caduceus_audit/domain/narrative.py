"""What a stored record says, in the terms of the problem (pure): who asked for which tool, what was decided
and by whom, what came of it. Every export format and the incident timeline read records through this.

A decision or a result does not name the person behind the call; the `Narrator`
remembers, per session and per call, who asked (from the grant identity signed),
so later records of the same call are told with their actor. Records are read in
append order, so a call's request comes before its decision.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

from caduceus_audit.domain.chain import ChainLink

Severity = Literal["info", "warning", "high"]
VERDICT_WORDS = {"allow": "allowed", "deny": "denied", "approve": "held for approval"}
# A session's or call's context is forgotten after this many newer ones (bounded memory in follow mode).
REMEMBERED = 100_000
SUMMARY_TEXT = 200
MCP_PREFIX = "mcp__"
# The stored columns of a record (an AuditRecord, or a row streamed from the store).
StoredRecord = ChainLink


@dataclass(frozen=True)
class Actor:
    user: str
    roles: tuple[str, ...]
    workspace: str | None = None
    channel: str | None = None


@dataclass(frozen=True)
class CallFacts:
    """The call a record is about: tool, redacted arguments and digest, as requested."""

    tool: str
    args: dict[str, Any]
    digest: str | None = None


@dataclass(frozen=True)
class DecisionFacts:
    verdict: str
    reason: str
    decided_by: str  # the signing issuer: policy or approval
    policy_ids: tuple[str, ...] = ()
    pack_version: str = ""
    approver_group: str | None = None


@dataclass(frozen=True)
class RecordView:
    """One record, read: its stored columns plus who, what call, what decision, what outcome, and a sentence."""

    record: StoredRecord
    body: dict[str, Any] | None
    summary: str
    severity: Severity
    actor: Actor | None = None
    call: CallFacts | None = None
    decision: DecisionFacts | None = None
    status: str | None = None  # a tool call's outcome (ok, error, denied, refused) or a reply's status
    text: str | None = None  # what a person or the agent said
    workspace: str | None = None

    @property
    def tenant(self) -> str:
        return self.record.tenant

    @property
    def kind(self) -> str:
        return self.record.kind


@dataclass
class Narrator:
    """Reads records in append order, remembering who is behind each session and call."""

    _sessions: OrderedDict[tuple[str, str], Actor] = field(default_factory=OrderedDict)
    _calls: OrderedDict[tuple[str, str], tuple[Actor | None, CallFacts]] = field(default_factory=OrderedDict)

    def view(self, record: StoredRecord) -> RecordView:
        body = _parsed(record.body)
        if record.rejected or body is None:
            why = record.reject_reason or "unreadable body"
            return RecordView(record, body, f"rejected message on {record.subject}: {why}", "high")
        reader = getattr(self, "_" + record.kind.replace(".", "_"), None)
        if reader is None:
            return RecordView(record, body, f"{record.kind} event", "info")
        view: RecordView = reader(record, body)
        return view

    def _remember(self, store: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        store[key] = value
        store.move_to_end(key)
        if len(store) > REMEMBERED:
            store.popitem(last=False)

    def _actor_of(self, record: StoredRecord) -> Actor | None:
        return self._sessions.get((record.tenant, record.session_id or ""))

    def _granted(self, record: StoredRecord, body: dict[str, Any]) -> Actor | None:
        grant = (body.get("grant") or {}).get("grant") or {}
        if not grant.get("user"):
            return self._actor_of(record)
        actor = Actor(str(grant["user"]), tuple(grant.get("roles") or ()), grant.get("workspace"), grant.get("channel"))
        if record.session_id:
            self._remember(self._sessions, (record.tenant, record.session_id), actor)
        return actor

    def _chat_message_in(self, record: StoredRecord, body: dict[str, Any]) -> RecordView:
        text = str(body.get("text", ""))
        return RecordView(record, body, f"message on {body.get('channel', 'chat')}: {_short(text)}", "info",
                          actor=self._actor_of(record), text=text, workspace=body.get("workspace"))

    def _turn_requested(self, record: StoredRecord, body: dict[str, Any]) -> RecordView:
        actor = self._granted(record, body)
        text = str(body.get("text", ""))
        who = _who(actor)
        return RecordView(record, body, f"{who} started a turn: {_short(text)}", "info", actor=actor, text=text,
                          workspace=actor.workspace if actor else None)

    def _turn_assigned(self, record: StoredRecord, body: dict[str, Any]) -> RecordView:
        actor = self._granted(record, body)
        return RecordView(record, body, f"turn handed to planner {body.get('worker_id', '?')}", "info", actor=actor,
                          workspace=actor.workspace if actor else None)

    def _tool_requested(self, record: StoredRecord, body: dict[str, Any]) -> RecordView:
        actor = self._granted(record, body)
        call = CallFacts(str(body.get("tool", "?")), dict(body.get("args") or {}), body.get("digest"))
        if record.call_id:
            self._remember(self._calls, (record.tenant, record.call_id), (actor, call))
        return RecordView(record, body, f"{_who(actor)} asked for {call.tool} {_short(_args_text(call.args))}",
                          "info", actor=actor, call=call, workspace=body.get("workspace"))

    def _call_context(self, record: StoredRecord, body: dict[str, Any]) -> tuple[Actor | None, CallFacts]:
        actor, call = self._calls.get((record.tenant, record.call_id or ""), (None, None))
        if call is None:
            call = CallFacts(str(body.get("tool") or (body.get("decision") or {}).get("decision", {}).get("tool", "?")),
                             dict(body.get("args") or {}))
        return actor or self._actor_of(record), call

    def _tool_decided(self, record: StoredRecord, body: dict[str, Any]) -> RecordView:
        actor, call = self._call_context(record, body)
        signed = body.get("decision") or {}
        inner = signed.get("decision") or {}
        decision = DecisionFacts(
            verdict=str(inner.get("verdict", "?")), reason=str(inner.get("reason", "")),
            decided_by=str(signed.get("key_id", "?")).split(":", 1)[0], policy_ids=tuple(inner.get("policy_ids") or ()),
            pack_version=str(inner.get("pack_version") or ""), approver_group=inner.get("approver_group"))
        rules = f" ({', '.join(decision.policy_ids)})" if decision.policy_ids else ""
        words = VERDICT_WORDS.get(decision.verdict, decision.verdict)
        severity: Severity = "warning" if decision.verdict == "deny" else "info"
        return RecordView(record, body, f"{call.tool} {words} by {decision.decided_by}{rules}: {decision.reason}",
                          severity, actor=actor, call=call, decision=decision, workspace=body.get("workspace"))

    def _tool_dispatched(self, record: StoredRecord, body: dict[str, Any]) -> RecordView:
        actor, call = self._call_context(record, body)
        to = "the MCP gateway" if call.tool.startswith(MCP_PREFIX) else "the executor"
        return RecordView(record, body, f"{call.tool} dispatched to {to}", "info", actor=actor, call=call,
                          workspace=body.get("workspace"))

    # The MCP gateway's own events: its registry, the pinned (approved) definitions, and definitions that changed.

    def _mcp_server_changed(self, record: StoredRecord, body: dict[str, Any]) -> RecordView:
        credentials = ", ".join(body.get("credentials") or ()) or "none"
        summary = (f"MCP server {body.get('server', '?')} {body.get('action', 'changed')} by {body.get('actor', '?')} "
                   f"({body.get('transport', '?')}: {_short(str(body.get('target', '')))}; scope "
                   f"{body.get('scope', 'tenant')}; credentials by name: {credentials})")
        return RecordView(record, body, summary, "warning" if body.get("action") == "removed" else "info",
                          actor=Actor(str(body.get("actor", "?")), ()),
                          call=CallFacts(f"{MCP_PREFIX}{body.get('server', '?')}__*", {}))

    def _mcp_pin_changed(self, record: StoredRecord, body: dict[str, Any]) -> RecordView:
        tool = f"{MCP_PREFIX}{body.get('server', '?')}__{body.get('tool', '?')}"
        where = f" in workspace {body['workspace']}" if body.get("workspace") else ""
        action = str(body.get("action", "changed"))
        return RecordView(record, body, f"definition of {tool} {action}{where} by {body.get('actor', '?')} "
                          f"(digest {str(body.get('digest', ''))[:12]})", "warning" if action == "revoked" else "info",
                          actor=Actor(str(body.get("actor", "?")), ()), call=CallFacts(tool, {}, body.get("digest")),
                          workspace=body.get("workspace") or None)

    def _mcp_definition_changed(self, record: StoredRecord, body: dict[str, Any]) -> RecordView:
        tool = f"{MCP_PREFIX}{body.get('server', '?')}__{body.get('tool', '?')}"
        return RecordView(record, body, f"definition of {tool} changed upstream (pinned "
                          f"{str(body.get('pinned_digest', ''))[:12]}, served {str(body.get('served_digest', ''))[:12]});"
                          f" withheld until approved again: {_short(str(body.get('diff', '')))}", "high",
                          call=CallFacts(tool, {}, body.get("served_digest")), text=str(body.get("diff", "")),
                          workspace=body.get("workspace") or None)

    def _tool_completed(self, record: StoredRecord, body: dict[str, Any]) -> RecordView:
        actor, call = self._call_context(record, body)
        status = str(body.get("status", "?"))
        detail = body.get("reason") or body.get("result") or ""
        severity: Severity = "info" if status == "ok" else "warning"
        return RecordView(record, body, f"{call.tool} {status}: {_short(str(detail))}", severity, actor=actor,
                          call=call, status=status, text=str(body.get("result", "")), workspace=body.get("workspace"))

    def _chat_reply(self, record: StoredRecord, body: dict[str, Any]) -> RecordView:
        status, text = str(body.get("status", "ok")), str(body.get("text", ""))
        return RecordView(record, body, f"agent replied ({status}): {_short(text)}",
                          "info" if status == "ok" else "warning", actor=self._actor_of(record), status=status,
                          text=text)

    def _worker_lifecycle(self, record: StoredRecord, body: dict[str, Any]) -> RecordView:
        state = str(body.get("state", "?"))
        severity: Severity = "warning" if state in ("crashed", "refused") else "info"
        detail = f": {body['detail']}" if body.get("detail") else ""
        return RecordView(record, body, f"{body.get('role', 'worker')} {body.get('worker_id', '?')} {state}{detail}",
                          severity, workspace=body.get("workspace"))

    def _model_usage(self, record: StoredRecord, body: dict[str, Any]) -> RecordView:
        actor = self._actor_of(record) or Actor(str(body.get("user", "?")), ())
        tokens = f"{body.get('prompt_tokens', 0)} prompt + {body.get('completion_tokens', 0)} completion tokens"
        return RecordView(record, body, f"{actor.user} used model {body.get('model') or '?'}: {tokens}, "
                          f"${float(body.get('cost_usd') or 0):.4f}", "info", actor=actor,
                          workspace=body.get("workspace"))

    def _model_requested(self, record: StoredRecord, body: dict[str, Any]) -> RecordView:
        actor = self._granted(record, body)
        call = CallFacts("model", {"model": str(body.get("model") or ""),
                                   "estimated_tokens": body.get("estimated_tokens", 0)}, body.get("prompt_digest"))
        self._remember(self._calls, (record.tenant, record.call_id or ""), (actor, call))
        return RecordView(record, body, f"{_who(actor)} asked the model gateway for a model call "
                          f"(about {body.get('estimated_tokens', 0)} prompt tokens)", "info", actor=actor, call=call,
                          workspace=body.get("workspace"))

    def _model_decided(self, record: StoredRecord, body: dict[str, Any]) -> RecordView:
        actor, call = self._call_context(record, body)
        call = CallFacts("model", call.args, call.digest) if call.tool != "model" else call
        signed = body.get("decision") or {}
        inner = signed.get("decision") or {}
        decision = DecisionFacts(
            verdict=str(inner.get("verdict", "?")), reason=str(inner.get("reason", "")),
            decided_by=str(signed.get("key_id", "?")).split(":", 1)[0], policy_ids=tuple(inner.get("policy_ids") or ()),
            pack_version=str(inner.get("pack_version") or ""))
        rules = f" ({', '.join(decision.policy_ids)})" if decision.policy_ids else ""
        upstream = f" to upstream {inner['upstream']}" if inner.get("upstream") else ""
        words = VERDICT_WORDS.get(decision.verdict, decision.verdict)
        severity: Severity = "warning" if decision.verdict == "deny" else "info"
        return RecordView(record, body, f"model call {words}{upstream} by {decision.decided_by}{rules}: "
                          f"{decision.reason}", severity, actor=actor, call=call, decision=decision,
                          workspace=body.get("workspace"))

    def _model_completed(self, record: StoredRecord, body: dict[str, Any]) -> RecordView:
        actor, call = self._call_context(record, body)
        status = str(body.get("status", "?"))
        detail = f": {_short(str(body['detail']))}" if body.get("detail") else ""
        return RecordView(record, body, f"model call via {body.get('upstream') or '?'} {status}{detail}",
                          "info" if status == "ok" else "warning", actor=actor or self._actor_of(record),
                          call=CallFacts("model", call.args, call.digest), status=status,
                          workspace=body.get("workspace"))

    def _chat_notice(self, record: StoredRecord, body: dict[str, Any]) -> RecordView:
        text = str(body.get("text", ""))
        actor = self._actor_of(record)
        return RecordView(record, body, f"{actor.user if actor else 'the person'} was told: {_short(text)}", "info",
                          actor=actor, text=text)

    def _approval(self, record: StoredRecord, body: dict[str, Any], what: str) -> RecordView:
        view = body.get("approval") or {}
        actor, call = self._call_context(record, {"tool": view.get("tool"), "args": view.get("args")})
        votes = ", ".join(f"{v.get('approver')} {v.get('answer')}d" + (f" ({v['comment']})" if v.get("comment") else "")
                          for v in view.get("votes") or ())
        asked = ", ".join(view.get("groups") or view.get("approvers") or ()) or "nobody"
        return RecordView(record, body, f"approval of {call.tool} {what} (asked of {asked}, quorum "
                          f"{view.get('quorum', '?')}){': ' + votes if votes else ''}", "info", actor=actor,
                          workspace=view.get("workspace"))  # its own line in the story, beside the call

    def _approval_requested(self, record: StoredRecord, body: dict[str, Any]) -> RecordView:
        return self._approval(record, body, "opened")

    def _approval_voted(self, record: StoredRecord, body: dict[str, Any]) -> RecordView:
        return self._approval(record, body, "counted an answer")

    def _approval_escalated(self, record: StoredRecord, body: dict[str, Any]) -> RecordView:
        return self._approval(record, body, "escalated to " + ", ".join((body.get("approval") or {}).get(
            "escalate_to") or ()))

    def _approval_reminded(self, record: StoredRecord, body: dict[str, Any]) -> RecordView:
        return self._approval(record, body, "reminded " + (", ".join(body.get("remind") or ()) or "its approvers"))

    def _approval_resolved(self, record: StoredRecord, body: dict[str, Any]) -> RecordView:
        view = body.get("approval") or {}
        return self._approval(record, body, f"{view.get('status', 'decided')}: {view.get('resolution', '')}".rstrip(": "))

    def _approval_refused(self, record: StoredRecord, body: dict[str, Any]) -> RecordView:
        return RecordView(record, body, f"{body.get('approver', '?')}'s {body.get('answer', '?')} on "
                          f"{body.get('channel', '?')} did not count: {body.get('reason', '')}", "warning",
                          actor=self._actor_of(record))

    def _policy_shadow_disagreed(self, record: StoredRecord, body: dict[str, Any]) -> RecordView:
        shadow, live = VERDICT_WORDS.get(body.get("shadow_verdict", ""), "?"), VERDICT_WORDS.get(
            body.get("live_verdict", ""), "?")
        return RecordView(record, body, f"shadow pack {body.get('shadow_version', '?')} would have {shadow} "
                          f"{body.get('tool', '?')} (live pack {body.get('live_version', '?')}: {live})", "info",
                          actor=self._actor_of(record), workspace=body.get("workspace"))

    def _turn_stopped(self, record: StoredRecord, body: dict[str, Any]) -> RecordView:
        actor = self._actor_of(record) or Actor(str(body.get("user", "?")), ())
        rule = f"guardrail:{body.get('guardrail', '?')}:{body.get('limit', '?')}"
        decision = DecisionFacts(verdict="deny", reason=str(body.get("reason", "")), decided_by="policy",
                                 policy_ids=(rule,))
        used = (f"{body.get('tool_calls', 0)} tool calls, {body.get('model_calls', 0)} model calls, "
                f"{body.get('tokens', 0)} tokens")
        return RecordView(record, body, f"policy stopped {_who(actor)}'s turn at {rule} ({used}): "
                          f"{decision.reason}", "warning", actor=actor, decision=decision,
                          workspace=body.get("workspace"))

    def _error(self, record: StoredRecord, body: dict[str, Any]) -> RecordView:
        return RecordView(record, body, f"{body.get('service', '?')} refused a message on {body.get('subject', '?')}: "
                          f"{body.get('reason', '')}", "high")


def _parsed(body: str) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except (ValueError, TypeError, RecursionError):  # an edited body may hold anything
        return None
    return value if isinstance(value, dict) else None


def _who(actor: Actor | None) -> str:
    if actor is None:
        return "someone"
    return f"{actor.user} ({', '.join(actor.roles)})" if actor.roles else actor.user


def _args_text(args: dict[str, Any]) -> str:
    return json.dumps(args, ensure_ascii=False, sort_keys=True)


def _short(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= SUMMARY_TEXT else flat[:SUMMARY_TEXT - 1] + "…"
