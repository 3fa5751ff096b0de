"""Broker handlers: start turns on workers, route decided calls to executors, report denials."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from prometheus_client import Counter

from caduceus_broker.domain import Routing, route_decision
from caduceus_broker.ledger import USED_DECISIONS_BUCKET
from caduceus_broker.workers import Worker, WorkerPool, WorkerStartFailed
from caduceus_bus import Delivery, EventConnection, Route, RouteTable, kv_bucket_subjects
from caduceus_contracts import (
    ChatReply,
    GrantExpired,
    ReloadingKeyring,
    SignatureError,
    ToolCallCompleted,
    ToolCallDecided,
    ToolCallDispatched,
    ToolCallRequested,
    TurnAssigned,
    TurnRequested,
    WorkerLifecycle,
    subjects,
    utcnow,
)

log = logging.getLogger("caduceus.broker")
# `mcp__<server>__<tool>`: calls the MCP gateway runs.
MCP_TOOL_PREFIX = "mcp__"
DISPATCHED = Counter("caduceus_broker_calls_dispatched_total", "Decided calls dispatched to an executor")
CALL_OUTCOMES = Counter("caduceus_broker_call_outcomes_total", "Outcomes of governed calls (ok, error, denied, "
                        "refused)", ["status"])
PENDING_TTL_S = 900.0
# A call waiting for people is kept as long as the longest approval policy may ask for (ApprovalTerms.timeout_s).
AWAITING_APPROVAL_TTL_S = 7 * 86_400.0 + 60


@dataclass
class PendingCalls:
    """Requested calls waiting for their decision, and decisions that arrived before their request."""

    requests: dict[str, tuple[float, ToolCallRequested]] = field(default_factory=dict)
    early: dict[str, tuple[float, ToolCallDecided]] = field(default_factory=dict)
    awaiting_approval: set[str] = field(default_factory=set)

    def expire(self, now: float) -> None:
        for table in (self.requests, self.early):
            for key in [k for k, (at, _) in table.items()
                        if now - at > (AWAITING_APPROVAL_TTL_S if k in self.awaiting_approval else PENDING_TTL_S)]:
                del table[key]
        self.awaiting_approval &= set(self.requests)

    def close(self, call_id: str) -> None:
        """The call has an outcome: nothing may be dispatched for it any more."""
        self.requests.pop(call_id, None)
        self.early.pop(call_id, None)
        self.awaiting_approval.discard(call_id)


class BrokerHandlers:
    def __init__(self, publisher: EventConnection, pool: WorkerPool, keys_dir, decision_timeout_s: float) -> None:
        self.publisher = publisher
        self.pool = pool
        self.keys_dir = keys_dir
        # The planner denies a call policy did not decide within this bound; a later decision must not run it.
        self.decision_timeout_s = decision_timeout_s
        self.keyring = ReloadingKeyring(keys_dir)
        self.pending = PendingCalls()

    async def on_turn_requested(self, turn: TurnRequested, delivery: Delivery) -> None:
        try:
            grant = turn.grant.verify(self.keyring)
        except (SignatureError, GrantExpired) as exc:
            await delivery.refuse(f"turn refused: {exc}")
            await self._reply(turn, "refused", f"this turn was refused: {exc}")
            return
        try:
            worker = await self.pool.ensure(grant.tenant, grant.workspace)
        except WorkerStartFailed as exc:
            await self._reply(turn, "error", f"the agent could not start: {exc}")
            return
        worker.turns[turn.message_id] = turn
        assigned = TurnAssigned(tenant=turn.tenant, message_id=turn.message_id, grant=turn.grant, text=turn.text,
                                worker_id=worker.worker_id)
        await self.publisher.publish(subjects.turn_assigned(grant.tenant, grant.workspace), assigned)

    async def on_tool_requested(self, request: ToolCallRequested) -> None:
        now = time.monotonic()
        self.pending.expire(now)
        early = self.pending.early.pop(request.call_id, None)
        self.pending.requests[request.call_id] = (now, request)
        if early is not None:
            await self._route(request, early[1])

    async def on_tool_decided(self, decided: ToolCallDecided, delivery: Delivery) -> None:
        try:
            decided.decision.verify(self.keyring)
        except SignatureError as exc:
            await delivery.refuse(f"decision for call {decided.call_id} rejected: {exc}")
            return
        entry = self.pending.requests.get(decided.call_id)
        if entry is None:
            self.pending.early[decided.call_id] = (time.monotonic(), decided)
            return
        await self._route(entry[1], decided)

    async def on_tool_completed(self, completed: ToolCallCompleted) -> None:
        CALL_OUTCOMES.labels(completed.status).inc()
        self.pending.close(completed.call_id)
        worker = self.pool.find(completed.tenant, completed.workspace)
        if worker is not None and worker.calls.pop(completed.call_id, None) is not None:
            worker.touch()

    async def on_chat_reply(self, reply: ChatReply) -> None:
        for worker in list(self.pool.workers.values()):
            if worker.tenant == reply.tenant and worker.turns.pop(reply.message_id, None) is not None:
                worker.touch()

    async def _route(self, request: ToolCallRequested, decided: ToolCallDecided) -> None:
        decision = decided.decision.decision
        routing = route_decision(request, decision)
        if routing.route == "await-approval":
            self.pending.awaiting_approval.add(request.call_id)
            return  # stays pending: the approval service decides again
        requested_at = self.pending.requests[request.call_id][0]
        # Measured from the planner's own clock too: its timer started before the broker saw the request.
        late = (time.monotonic() - requested_at > self.decision_timeout_s
                or (utcnow() - request.occurred_at).total_seconds() > self.decision_timeout_s)
        if late and request.call_id not in self.pending.awaiting_approval and routing.route != "deny":
            routing = Routing("refuse", f"the decision came after the {self.decision_timeout_s:g} s bound; "
                                        "the call was already denied")
        self.pending.close(request.call_id)
        if routing.route == "dispatch":
            dispatched = ToolCallDispatched(tenant=request.tenant, call_id=request.call_id,
                                            workspace=request.workspace, session_id=request.session_id,
                                            tool=request.tool, args=request.args, decision=decided.decision)
            worker = self.pool.find(request.tenant, request.workspace)
            if worker is not None:
                worker.calls[request.call_id] = dispatched
            # An MCP tool runs at the MCP gateway (which verifies the decision again), never in an executor.
            subject = (subjects.mcp_dispatched if request.tool.startswith(MCP_TOOL_PREFIX)
                       else subjects.tool_dispatched)(request.tenant, request.workspace)
            await self.publisher.publish(subject, dispatched)
            DISPATCHED.inc()
        elif routing.route in ("deny", "refuse"):
            status = "denied" if routing.route == "deny" else "refused"
            await self.publisher.publish(
                subjects.tool_completed(request.tenant, request.workspace),
                ToolCallCompleted.of(request, status, reason=routing.reason))
        # "in-planner": the planner runs agent-loop tools itself and reports their outcome.

    async def _reply(self, turn: TurnRequested, status: str, text: str) -> None:
        session = turn.grant.grant.session_id
        await self.publisher.publish(
            subjects.chat_reply(turn.tenant, session),
            ChatReply(tenant=turn.tenant, message_id=turn.message_id, session_id=session, status=status, text=text))

    async def report_worker(self, worker: Worker, role: str, state: str, detail: str) -> None:
        event = WorkerLifecycle(tenant=worker.tenant, workspace=worker.workspace, worker_id=worker.worker_id,
                                role=role if role in ("planner", "executor") else "planner", state=state,
                                detail=detail)
        try:
            await self.publisher.publish(subjects.worker_event(worker.tenant, worker.workspace), event)
        except Exception:
            log.exception("could not report worker %s %s", worker.worker_id, state)
        if state == "crashed":
            await self._fail_in_flight(worker, detail)

    async def _fail_in_flight(self, worker: Worker, detail: str) -> None:
        """A crashed pair's calls and turns get an outcome now, so nobody waits for one that cannot come."""
        for call in list(worker.calls.values()):
            self.pending.close(call.call_id)
            await self.publisher.publish(
                subjects.tool_completed(call.tenant, call.workspace),
                ToolCallCompleted.of(call, "error", reason=f"the agent's worker stopped while this call ran ({detail}); "
                                                           "it may have run partly"))
        worker.calls.clear()
        for turn in list(worker.turns.values()):
            await self._reply(turn, "error", f"the agent stopped unexpectedly ({detail}) and this message was not "
                                             "completed; send it again to start a fresh agent")
        worker.turns.clear()


# Every message the broker handles. Each turn, request, decision and outcome goes to one broker replica (a queue
# group); every replica sees every chat reply, because each tracks the turns its own workers have in flight.
ROUTES = RouteTable(
    role="broker",
    routes=(
        Route(subjects.TURN_REQUESTED_ALL, TurnRequested, BrokerHandlers.on_turn_requested, queue="broker",
              concurrency=16, malformed="ignore"),  # identity's own output: the audit trail keeps a bad one
        Route(subjects.TOOL_REQUESTED_ALL, ToolCallRequested, BrokerHandlers.on_tool_requested, queue="broker",
              concurrency=16, malformed="ignore"),  # policy refuses (and answers) a malformed request
        Route(subjects.TOOL_DECIDED_ALL, ToolCallDecided, BrokerHandlers.on_tool_decided, queue="broker",
              concurrency=16),
        Route(subjects.TOOL_COMPLETED_ALL, ToolCallCompleted, BrokerHandlers.on_tool_completed, queue="broker",
              concurrency=16),
        Route(subjects.CHAT_REPLY_ALL, ChatReply, BrokerHandlers.on_chat_reply, concurrency=16, malformed="ignore"),
    ),
    publishes=(
        subjects.TURN_ASSIGNED_ALL,
        subjects.TOOL_DISPATCHED_ALL,
        subjects.MCP_DISPATCHED_ALL,
        subjects.TOOL_COMPLETED_ALL,
        subjects.CHAT_REPLY_ALL,
        subjects.WORKER_LIFECYCLE_ALL,
        "caduceus.health.worker.>",  # asks its workers whether they are ready
        *kv_bucket_subjects(USED_DECISIONS_BUCKET),  # creates the bucket its executors claim decisions in
    ),
    grants=("stream-setup",),
)
