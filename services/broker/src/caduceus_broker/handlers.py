"""Broker handlers: start turns on workers, route decided calls to executors, report denials."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from prometheus_client import Counter

from caduceus_broker.catch_up import READ_BACK
from caduceus_broker.domain import Routing, route_decision
from caduceus_broker.lease import LEASES_BUCKET, Leases, LeaseUnavailable
from caduceus_broker.ledger import USED_DECISIONS_BUCKET
from caduceus_broker.workers import Worker, WorkerPool, WorkerStartFailed
from caduceus_bus import Delivery, EventConnection, Route, RouteTable, kv_bucket_subjects
from caduceus_contracts import (
    ChatReply,
    Event,
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
MCP_HEALTH_SUBJECT = "caduceus.health.mcp"  # answered by every MCP gateway process (BusService)
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


@dataclass
class CallSeen:
    """A governed call as every broker replica sees it on the bus, until its outcome."""

    request: ToolCallRequested
    at: float
    decided: ToolCallDecided | None = None
    dispatched: bool = False


@dataclass
class WorkspaceInFlight:
    """One tenant/workspace's turns and calls that have no answer yet, whichever replica owns it.

    A replica that takes the workspace over from an owner that died answers from this: the turns and calls the
    dead owner held get an error, the ones it never started are started by the new owner.
    """

    turns: dict[str, tuple[float, TurnRequested, bool]] = field(default_factory=dict)  # (seen at, turn, assigned)
    calls: dict[str, CallSeen] = field(default_factory=dict)

    def expire(self, now: float) -> None:
        for key in [k for k, (at, _, _) in self.turns.items() if now - at > PENDING_TTL_S]:
            del self.turns[key]
        for key in [k for k, c in self.calls.items() if now - c.at > AWAITING_APPROVAL_TTL_S
                    or (now - c.at > PENDING_TTL_S and not (c.decided and c.decided.decision.decision.verdict
                                                            == "approve"))]:
            del self.calls[key]

    @property
    def empty(self) -> bool:
        return not self.turns and not self.calls


class BrokerHandlers:
    def __init__(self, publisher: EventConnection, pool: WorkerPool, keys_dir, decision_timeout_s: float,
                 leases: Leases | None = None) -> None:
        self.publisher = publisher
        self.pool = pool
        self.keys_dir = keys_dir
        # The planner denies a call policy did not decide within this bound; a later decision must not run it.
        self.decision_timeout_s = decision_timeout_s
        self.keyring = ReloadingKeyring(keys_dir)
        self.pending = PendingCalls()
        # Which workspaces this replica owns (None: the only broker, it owns every workspace).
        self.leases = leases
        self.in_flight: dict[tuple[str, str], WorkspaceInFlight] = {}
        # Turns and calls answered (a reply, an outcome), and when: one seen again (read back from the stream at
        # start, or delivered out of order) is never taken for one still waiting.
        self.answered: dict[str, float] = {}
        self._takeovers: dict[tuple[str, str], asyncio.Lock] = {}
        self._mcp_seen_at = -1.0  # when an MCP gateway last answered the health request
        # Set once this replica knows what is in flight (BrokerApp clears it until it has read the stream back):
        # until then it handles nothing and takes no lease, since it could not answer what its last owner held.
        self.caught_up = asyncio.Event()
        self.caught_up.set()

    def owns(self, tenant: str, workspace: str) -> bool:
        return self.leases is None or self.leases.owns(tenant, workspace)

    def _seen(self, tenant: str, workspace: str) -> WorkspaceInFlight:
        return self.in_flight.setdefault((tenant, workspace), WorkspaceInFlight())

    async def _claim(self, tenant: str, workspace: str) -> bool:
        """Own the workspace (already, or by taking its lease now; a fresh owner first answers what the last
        one left). False: another replica owns it, or nobody can tell (the bucket of leases does not answer)."""
        if self.leases is None:
            return True
        key = (tenant, workspace)
        async with self._takeovers.setdefault(key, asyncio.Lock()):
            if self.leases.owns(tenant, workspace):
                return True
            try:
                if not await self.leases.acquire(tenant, workspace):
                    return False
            except LeaseUnavailable as exc:
                log.warning("cannot tell who owns %s/%s: %s", tenant, workspace, exc)
                return False
            await self._take_over(tenant, workspace)
            return True

    async def catch_up(self, events: list[Event]) -> None:
        """Remember what was in flight before this replica started (events read back from the stream, in stream
        order), then start handling: the lease watch takes over a workspace whose owner is gone."""
        for event in events:
            try:
                self.remember(event, at=_seen_at(event))
            except (SignatureError, GrantExpired):
                continue  # refused live by whoever saw it
        self.caught_up.set()

    def remember(self, event: Event, at: float | None = None) -> bool:
        """Track one event of a workspace's turns and calls (every replica does, owner or not); False when it
        belongs to a turn or call already answered. Raises SignatureError/GrantExpired for a bad turn or decision."""
        now = time.monotonic()
        at = now if at is None else at
        if isinstance(event, TurnRequested):
            grant = event.grant.verify(self.keyring)
            if event.message_id in self.answered:
                return False
            seen = self._seen(grant.tenant, grant.workspace)
            seen.expire(now)
            seen.turns.setdefault(event.message_id, (at, event, False))
        elif isinstance(event, TurnAssigned):
            grant = event.grant.grant
            seen = self.in_flight.get((grant.tenant, grant.workspace))
            if seen is not None and event.message_id in seen.turns:
                first, turn, _ = seen.turns[event.message_id]
                seen.turns[event.message_id] = (first, turn, True)
        elif isinstance(event, ChatReply):
            self.answered[event.message_id] = now
            for (tenant, _), seen in self.in_flight.items():
                if tenant == event.tenant:
                    seen.turns.pop(event.message_id, None)
        elif isinstance(event, ToolCallRequested):
            if event.call_id in self.answered:
                return False
            seen = self._seen(event.tenant, event.workspace)
            seen.expire(now)
            seen.calls.setdefault(event.call_id, CallSeen(event, at))
        elif isinstance(event, ToolCallDecided):
            event.decision.verify(self.keyring)
            decision = event.decision.decision
            if event.call_id in self.answered:
                return False
            seen = self.in_flight.get((decision.tenant, decision.workspace))
            call = seen.calls.get(event.call_id) if seen is not None else None
            if call is not None:
                call.decided = event
        elif isinstance(event, ToolCallDispatched):
            seen = self.in_flight.get((event.tenant, event.workspace))
            call = seen.calls.get(event.call_id) if seen is not None else None
            if call is not None:
                call.dispatched = True
        elif isinstance(event, ToolCallCompleted):
            self.answered[event.call_id] = now
            seen = self.in_flight.get((event.tenant, event.workspace))
            if seen is not None:
                seen.calls.pop(event.call_id, None)
        return True

    async def on_turn_requested(self, turn: TurnRequested, delivery: Delivery) -> None:
        await self.caught_up.wait()
        try:
            if not self.remember(turn):
                return  # answered already
        except (SignatureError, GrantExpired) as exc:
            # Every replica sees the turn; the first to claim its message id answers it.
            if self.leases is None or await self.leases.once(f"refused.{turn.message_id}"):
                await delivery.refuse(f"turn refused: {exc}")
                await self._reply(turn, "refused", f"this turn was refused: {exc}")
            return
        grant = turn.grant.grant
        if await self._claim(grant.tenant, grant.workspace):
            await self._assign(turn)
        # else: its owner assigns it; if the owner dies first, the replica that takes the workspace over does

    async def _assign(self, turn: TurnRequested) -> None:
        """Start (or find) the workspace's planner and executor here, and hand the turn to the planner."""
        grant = turn.grant.grant
        entry = self._seen(grant.tenant, grant.workspace).turns.get(turn.message_id)
        if entry is not None and entry[2]:
            return  # already assigned
        try:
            worker = await self.pool.ensure(grant.tenant, grant.workspace)
        except WorkerStartFailed as exc:
            await self._reply(turn, "error", f"the agent could not start: {exc}")
            return
        worker.turns[turn.message_id] = turn
        self._seen(grant.tenant, grant.workspace).turns[turn.message_id] = (time.monotonic(), turn, True)
        assigned = TurnAssigned(tenant=turn.tenant, message_id=turn.message_id, grant=turn.grant, text=turn.text,
                                worker_id=worker.worker_id)
        await self.publisher.publish(subjects.turn_assigned(grant.tenant, grant.workspace), assigned)

    async def on_turn_assigned(self, assigned: TurnAssigned) -> None:
        """Another replica (the owner) gave a turn to its planner."""
        await self.caught_up.wait()
        self.remember(assigned)

    async def on_tool_requested(self, request: ToolCallRequested) -> None:
        await self.caught_up.wait()
        now = time.monotonic()
        if not self.remember(request):
            return  # answered already
        if not await self._claim(request.tenant, request.workspace):
            return  # its owner routes it
        self.pending.expire(now)
        early = self.pending.early.pop(request.call_id, None)
        self.pending.requests[request.call_id] = (now, request)
        if early is not None:
            await self._route(request, early[1])

    async def on_tool_decided(self, decided: ToolCallDecided, delivery: Delivery) -> None:
        await self.caught_up.wait()
        try:
            if not self.remember(decided):
                return  # the call has its outcome already
        except SignatureError as exc:
            if self.leases is None or await self.leases.once(f"rejected.{decided.decision.decision.decision_id}"):
                await delivery.refuse(f"decision for call {decided.call_id} rejected: {exc}")
            return
        decision = decided.decision.decision
        if not await self._claim(decision.tenant, decision.workspace):
            return
        entry = self.pending.requests.get(decided.call_id)
        if entry is None:
            self.pending.early[decided.call_id] = (time.monotonic(), decided)
            return
        await self._route(entry[1], decided)

    async def on_tool_dispatched(self, dispatched: ToolCallDispatched) -> None:
        """The owner handed a call to its executor (or the MCP gateway)."""
        await self.caught_up.wait()
        self.remember(dispatched)

    async def on_tool_completed(self, completed: ToolCallCompleted) -> None:
        await self.caught_up.wait()
        self.remember(completed)
        if not self.owns(completed.tenant, completed.workspace):
            return
        CALL_OUTCOMES.labels(completed.status).inc()
        self.pending.close(completed.call_id)
        worker = self.pool.find(completed.tenant, completed.workspace)
        if worker is not None and worker.calls.pop(completed.call_id, None) is not None:
            worker.touch()

    async def on_chat_reply(self, reply: ChatReply) -> None:
        await self.caught_up.wait()
        self.remember(reply)
        for worker in list(self.pool.workers.values()):
            if worker.tenant == reply.tenant and worker.turns.pop(reply.message_id, None) is not None:
                worker.touch()

    async def watch_leases(self, interval: float = 1.0) -> None:
        """Take over a workspace with turns or calls waiting whose owner's lease lapsed (the owner died)."""
        await self.caught_up.wait()
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for key in [k for k, at in self.answered.items() if now - at > PENDING_TTL_S]:
                del self.answered[key]
            for (tenant, workspace), seen in list(self.in_flight.items()):
                seen.expire(time.monotonic())
                if seen.empty:
                    if not self.owns(tenant, workspace):
                        self.in_flight.pop((tenant, workspace), None)
                    continue
                if self.owns(tenant, workspace):
                    continue
                try:
                    await self._claim(tenant, workspace)
                except Exception:
                    log.exception("taking over %s/%s failed", tenant, workspace)
            try:
                await self.release_idle()
            except Exception:
                log.exception("releasing idle workspaces failed")

    async def release_idle(self) -> None:
        """Give up the lease of every owned workspace (held for a while) whose pair was stopped (idle) and that has
        nothing in flight: its next turn goes to whichever replica takes it first, and this one stops renewing it."""
        if self.leases is None:
            return
        for (tenant, workspace), held in list(self.leases.held.items()):
            if time.monotonic() - held.taken_at < self.leases.ttl_s * 2:
                continue  # just taken: its first turn or call may not have started the pair yet
            async with self._takeovers.setdefault((tenant, workspace), asyncio.Lock()):
                seen = self.in_flight.get((tenant, workspace))
                if self.pool.find(tenant, workspace) is None and (seen is None or seen.empty):
                    await self.leases.release(tenant, workspace)
                    self.in_flight.pop((tenant, workspace), None)

    async def _take_over(self, tenant: str, workspace: str) -> None:
        """This replica just took the workspace's lease: answer what the last owner left in flight.

        Its sandboxes died with it (or were stopped when it lost the lease): a turn it had given to its planner,
        a call it had dispatched to its executor and a call waiting for approval get an error (a dispatched call
        may have run partly; the ledger of used decisions keeps it from running again; a later approval finds the
        call closed); a turn it never assigned and a call it never dispatched are handled here as if they had just
        arrived (a decision older than the bound is refused).
        """
        seen = self._seen(tenant, workspace)
        if seen.empty:
            return
        log.warning("owner of %s/%s now; answering the %d turn(s) and %d call(s) seen before (its last owner's, "
                    "if it had one)", tenant, workspace, len(seen.turns), len(seen.calls))
        for call_id, call in list(seen.calls.items()):
            if call.dispatched:
                seen.calls.pop(call_id, None)
                self.pending.close(call_id)
                await self.publisher.publish(
                    subjects.tool_completed(tenant, workspace),
                    ToolCallCompleted.of(call.request, "error", reason=(
                        "the broker that dispatched this call stopped while it ran; it may have run partly and "
                        "will not run again")))
                continue
            if call.decided is not None and call.decided.decision.decision.verdict == "approve":
                # Its requester waited in the dead pair's planner (its turn is answered below): an approval
                # given later must not run it for nobody.
                seen.calls.pop(call_id, None)
                self.pending.close(call_id)
                await self.publisher.publish(
                    subjects.tool_completed(tenant, workspace),
                    ToolCallCompleted.of(call.request, "error", reason=(
                        "the broker running the agent that asked for this call stopped while it waited for "
                        "approval; it will not run (ask again)")))
                continue
            self.pending.requests[call_id] = (call.at, call.request)
            if call.decided is not None:
                await self._route(call.request, call.decided)
        for message_id, (_, turn, assigned) in list(seen.turns.items()):
            if assigned:
                seen.turns.pop(message_id, None)
                await self._reply(turn, "error", "the broker running this agent stopped before the turn was "
                                                 "completed; send it again to continue with a fresh agent")
            else:
                await self._assign(turn)

    async def on_lease_lost(self, tenant: str, workspace: str, reason: str) -> None:
        """Another replica may own the workspace now: stop its workers here at once (it answers their work)."""
        worker = self.pool.find(tenant, workspace)
        if worker is not None:
            worker.calls.clear()
            worker.turns.clear()
            await self.pool.retire(worker, "stopped", f"this broker lost the workspace's lease: {reason}")
        for call_id in [c for c, (_, r) in self.pending.requests.items()
                        if (r.tenant, r.workspace) == (tenant, workspace)]:
            self.pending.close(call_id)

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
        if routing.route == "dispatch" and request.tool.startswith(MCP_TOOL_PREFIX) \
                and not await self._mcp_gateway_listening():
            # An MCP dispatch goes to whichever gateway listens now (a queue group, not a stored consumer): with
            # none, it would be lost and the agent would wait out its whole tool timeout.
            await self.publisher.publish(
                subjects.tool_completed(request.tenant, request.workspace),
                ToolCallCompleted.of(request, "error", reason=(
                    "no MCP gateway is running to take this call, so it did not run; try again once the mcp "
                    "service is back (`caduceus status`)")))
            return
        if routing.route == "dispatch":
            dispatched = ToolCallDispatched(tenant=request.tenant, call_id=request.call_id,
                                            workspace=request.workspace, session_id=request.session_id,
                                            tool=request.tool, args=request.args, decision=decided.decision)
            worker = self.pool.find(request.tenant, request.workspace)
            if worker is None and not request.tool.startswith(MCP_TOOL_PREFIX):
                try:  # a new owner, or a pair stopped while idle: the call needs an executor listening
                    worker = await self.pool.ensure(request.tenant, request.workspace)
                except WorkerStartFailed as exc:
                    await self.publisher.publish(
                        subjects.tool_completed(request.tenant, request.workspace),
                        ToolCallCompleted.of(request, "error", reason=f"the agent could not start: {exc}"))
                    return
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

    async def _mcp_gateway_listening(self) -> bool:
        """False only when no MCP gateway process is subscribed at all (NATS says no responders at once). One that
        is slow to answer is taken as there; an answer is trusted for a second."""
        if time.monotonic() - self._mcp_seen_at < 1.0:
            return True
        try:
            await self.publisher.nc.request(MCP_HEALTH_SUBJECT, b"", timeout=1.0)
        except NoRespondersError:
            return False
        except (NatsTimeout, TimeoutError):
            return True
        self._mcp_seen_at = time.monotonic()
        return True

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


def _seen_at(event: Event) -> float:
    """When (on this process's monotonic clock) an event read back from the stream was first seen on the bus."""
    return time.monotonic() - max(0.0, (utcnow() - event.occurred_at).total_seconds())


# Every message the broker handles. Every replica sees every turn, call and outcome (no queue group): the replica
# holding a workspace's lease acts on it, the others keep track of what is in flight, so that whoever takes the
# workspace over when its owner dies can answer it.
ROUTES = RouteTable(
    role="broker",
    routes=(
        Route(subjects.TURN_REQUESTED_ALL, TurnRequested, BrokerHandlers.on_turn_requested,
              concurrency=16, malformed="ignore"),  # identity's own output: the audit trail keeps a bad one
        Route(subjects.TURN_ASSIGNED_ALL, TurnAssigned, BrokerHandlers.on_turn_assigned, concurrency=16,
              malformed="ignore"),  # a broker's own output
        Route(subjects.TOOL_REQUESTED_ALL, ToolCallRequested, BrokerHandlers.on_tool_requested,
              concurrency=16, malformed="ignore"),  # policy refuses (and answers) a malformed request
        Route(subjects.TOOL_DECIDED_ALL, ToolCallDecided, BrokerHandlers.on_tool_decided, concurrency=16),
        Route(subjects.TOOL_DISPATCHED_ALL, ToolCallDispatched, BrokerHandlers.on_tool_dispatched, concurrency=16,
              malformed="ignore"),  # a broker's own output
        Route(subjects.MCP_DISPATCHED_ALL, ToolCallDispatched, BrokerHandlers.on_tool_dispatched, concurrency=16,
              malformed="ignore"),
        Route(subjects.TOOL_COMPLETED_ALL, ToolCallCompleted, BrokerHandlers.on_tool_completed, concurrency=16),
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
        MCP_HEALTH_SUBJECT,  # asks whether any MCP gateway is there before dispatching an MCP call
        *kv_bucket_subjects(USED_DECISIONS_BUCKET),  # creates the bucket its executors claim decisions in
        *kv_bucket_subjects(LEASES_BUCKET),  # which replica owns which workspace
    ),
    grants=("stream-setup",),
    reads_back=READ_BACK,  # at start: what was in flight before this replica started (catch_up.py)
)
