"""The planner's link to the control plane: each tool call goes to the bus and its outcome comes back.

Hermes calls tools from its own threads, synchronously; the gateway runs one
asyncio loop in a background thread that owns the NATS connection, and offers
a blocking `request_call` that never raises.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from caduceus_bus import (
    CLAIM_WAIT_S,
    BusSettings,
    CallClaims,
    ClaimUnknown,
    EventConnection,
    Route,
    Router,
    RouteTable,
    call_claim_subjects,
)
from caduceus_contracts import (
    ApprovalRequested,
    CanonicalizationError,
    Decision,
    Keyring,
    SignatureError,
    SignedGrant,
    ToolCallCompleted,
    ToolCallDecided,
    ToolCallRequested,
    call_digest,
    subjects,
    utcnow,
)
from caduceus_hermes_plugin.outcome import CallOutcome, denied
from caduceus_hermes_plugin.tools import runs_in_planner
from caduceus_telemetry.genai import (
    EVALUATION_RESULT,
    GEN_AI_TOOL_CALL_ID,
    decision_event,
    execute_tool_attributes,
    execute_tool_span_name,
)

log = logging.getLogger(__name__)
tracer = trace.get_tracer("caduceus.planner")


@dataclass
class _PendingCall:
    request: ToolCallRequested
    # When the planner stops waiting for a decision (loop time): moved on when policy asks for an approval.
    deadline: float
    decided: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    completed: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    approval: str = ""  # "" (none), "asked" (policy said approve) or "open" (the approval service took it up)
    # The verified decisions as they arrived (issuer, when, decision): recorded on the call's span.
    decisions: list[tuple[str, int, Decision]] = field(default_factory=list)


@dataclass(frozen=True)
class GatewayTimeouts:
    decision_s: float = 5.0  # policy must decide within this bound, or the call is denied
    completion_s: float = 300.0  # the executor must finish within this bound
    approval_s: float = 7 * 86_400.0  # the longest a call waits for people, whatever an approval says


class ToolGateway:
    """Sends governed tool calls for one tenant/workspace and waits for their outcome."""

    def __init__(self, conn: EventConnection, loop: asyncio.AbstractEventLoop, *, tenant: str, workspace: str,
                 keyring: Keyring, timeouts: GatewayTimeouts = GatewayTimeouts()) -> None:
        self.conn = conn
        self.loop = loop
        self.tenant = tenant
        self.workspace = workspace
        self.keyring = keyring
        self.timeouts = timeouts
        self._grants: dict[str, SignedGrant] = {}
        self._traces: dict[str, otel_context.Context] = {}
        self._pending: dict[str, _PendingCall] = {}
        self._router: Router | None = None
        self._claims: CallClaims | None = None

    # --- lifecycle (on the gateway's loop) ---

    async def start(self) -> None:
        """Follow this tenant/workspace's decisions, approvals and outcomes (GATEWAY_ROUTES)."""
        self._router = Router(GATEWAY_ROUTES.bound(tenant=self.tenant, workspace=self.workspace), self, self.conn)
        await self._router.start()

    async def stop(self) -> None:
        if self._router is not None:
            await self._router.stop()
            self._router = None

    def bind_session(self, session_id: str, grant: SignedGrant, trace_context: otel_context.Context | None = None) -> None:
        """The grant every call of this session carries (Hermes's hooks know no user), and the turn's trace."""
        self._grants[session_id] = grant
        if trace_context is not None:
            self._traces[session_id] = trace_context

    def unbind_session(self, session_id: str) -> None:
        self._grants.pop(session_id, None)
        self._traces.pop(session_id, None)

    # --- called from Hermes threads ---

    def request_call(self, tool: str, args: dict[str, Any], *, session_id: str,
                     run_locally: Callable[[dict[str, Any]], Any] | None = None) -> CallOutcome:
        """Ask for one call and block until its outcome. Never raises: any failure is a denial."""
        try:
            future: Future = asyncio.run_coroutine_threadsafe(self._traced(tool, args, session_id), self.loop)
            outcome, request = future.result(self.timeouts.decision_s * 2 + self.timeouts.approval_s
                                             + self.timeouts.completion_s + 2 * CLAIM_WAIT_S + 5)
        except Exception as exc:  # the plugin must never raise into Hermes
            log.exception("governed call failed")
            return denied(f"the control plane could not be reached ({type(exc).__name__}); nothing ran")
        if outcome.status == "allowed-in-planner" and run_locally is not None:
            return self._run_in_planner(tool, args, request, run_locally)
        return outcome

    def _run_in_planner(self, tool: str, args: dict[str, Any], request: ToolCallRequested,
                        run_locally: Callable[[dict[str, Any]], Any]) -> CallOutcome:
        try:
            result = run_locally(args)
            outcome = CallOutcome("ok", result if isinstance(result, str) else str(result))
        except Exception as exc:
            outcome = CallOutcome("error", f'{{"error": "{type(exc).__name__}: {exc}"}}')
        self._report(request, outcome, executed_by="planner")
        return outcome

    def _report(self, request: ToolCallRequested, outcome: CallOutcome, executed_by: str | None) -> None:
        event = ToolCallCompleted.of(request, outcome.status, result=outcome.result, reason=outcome.reason,
                                     executed_by=executed_by)
        try:
            asyncio.run_coroutine_threadsafe(
                self.conn.publish(subjects.tool_completed(self.tenant, self.workspace), event), self.loop
            ).result(10)
        except Exception:
            log.exception("could not publish the outcome of %s", request.call_id)

    # --- on the gateway's loop ---

    async def _traced(self, tool: str, args: dict[str, Any], session_id: str) -> tuple[CallOutcome, ToolCallRequested | None]:
        parent = self._traces.get(session_id)
        with tracer.start_as_current_span(execute_tool_span_name(tool), context=parent,
                                          attributes=execute_tool_attributes(tool)) as span:
            outcome, request = await self._govern(tool, args, session_id)
            span.set_attribute("caduceus.outcome", outcome.status)
            if request is not None:
                span.set_attribute(GEN_AI_TOOL_CALL_ID, request.call_id)
            return outcome, request

    async def _govern(self, tool: str, args: dict[str, Any], session_id: str) -> tuple[CallOutcome, ToolCallRequested | None]:
        grant = self._grants.get(session_id)
        if grant is None:
            return denied(f"no session grant for session {session_id!r}; nothing ran"), None
        try:
            digest = call_digest(tenant=self.tenant, workspace=self.workspace, session=session_id, tool=tool, args=args)
            request = ToolCallRequested(tenant=self.tenant, grant=grant, workspace=self.workspace,
                                        session_id=session_id, tool=tool, args=args, digest=digest)
        except (CanonicalizationError, ValueError) as exc:
            return denied(f"the call's arguments are not valid JSON for the bus: {exc}"), None
        pending = _PendingCall(request, deadline=self.loop.time() + self.timeouts.decision_s)
        self._pending[request.call_id] = pending
        try:
            await self.conn.publish(subjects.tool_requested(self.tenant), request)
            decision = await self._decision(pending)
            span = trace.get_current_span()
            for decided_by, signed_at, verdict in pending.decisions:
                span.add_event(EVALUATION_RESULT, decision_event(decided_by, verdict.verdict, verdict.reason,
                                                                 verdict.policy_ids, verdict.pack_version),
                               timestamp=signed_at)
            if decision is None:
                return await self._undecided(pending), request
            if decision.verdict == "allow" and runs_in_planner(tool):
                return CallOutcome("allowed-in-planner"), request
            if decision.verdict == "deny":
                return denied(decision.reason), request
            return await self._result(pending), request
        finally:
            self._pending.pop(request.call_id, None)

    async def _undecided(self, pending: _PendingCall) -> CallOutcome:
        """No decision in time: close the call so that nothing runs it, then say it was denied. If an executor
        took it first (its decision came, and was dispatched, just as the planner stopped waiting), its result
        is the answer: the requester is never told "denied" about a call that runs."""
        closed = await self._close(pending.request)
        if closed is False:
            log.info("call %s was taken by its runner as its decision bound passed: waiting for its result",
                     pending.request.call_id)
            return await self._result(pending)
        reason = self._no_decision_reason(pending)
        outcome = denied(reason) if closed else CallOutcome("error", reason=(
            f"{reason.removesuffix('; denied (fail closed)')}, and the call could not be closed (the ledger of "
            "used decisions did not answer): it should not run, but that cannot be confirmed"))
        await self._publish_outcome(pending.request, outcome)
        return outcome

    async def _result(self, pending: _PendingCall) -> CallOutcome:
        """The outcome of a decided call; none in time: closed, if it was never taken, so that it never runs."""
        try:
            completed: ToolCallCompleted = await asyncio.wait_for(
                asyncio.shield(pending.completed), self.timeouts.completion_s)
        except TimeoutError:
            closed = await self._close(pending.request)
            bound = f"{self.timeouts.completion_s:g} s"
            reason = (f"no executor took the call within {bound}; it was closed and will not run" if closed else
                      f"no result within {bound}; the call was taken up and may have run" if closed is False else
                      f"no result within {bound}")
            outcome = CallOutcome("error", reason=reason)
            await self._publish_outcome(pending.request, outcome)
            return outcome
        return CallOutcome(completed.status, completed.result, completed.reason)

    async def _close(self, request: ToolCallRequested) -> bool | None:
        """Close the call in the ledger (caduceus_bus.claims): True when nothing can run it any more, False when
        a runner took it first, None when the ledger did not answer."""
        if self._claims is None:
            self._claims = CallClaims(self.conn.js)
        try:
            return await self._claims.close(self.tenant, self.workspace, request.call_id)
        except ClaimUnknown as exc:
            log.warning("could not close call %s: %s", request.call_id, exc)
            return None

    async def _decision(self, pending: _PendingCall):
        """The call's decision, or None once its deadline (which an approval moves) has passed."""
        while True:
            remaining = pending.deadline - self.loop.time()
            if remaining <= 0:
                return None
            try:
                return await asyncio.wait_for(asyncio.shield(pending.decided), remaining)
            except TimeoutError:
                continue  # the deadline may have moved meanwhile

    def _no_decision_reason(self, pending: _PendingCall) -> str:
        if pending.approval == "asked":
            return (f"the approval service did not take up the approval within {self.timeouts.decision_s:g} s; "
                    "denied (fail closed)")
        if pending.approval == "open":
            return "no approval decision arrived before the approval expired; denied (fail closed)"
        return f"policy did not decide within {self.timeouts.decision_s:g} s; denied (fail closed)"

    async def on_approval_requested(self, event: ApprovalRequested) -> None:
        """The approval service opened the call's approval: wait for its decision until it expires."""
        pending = self._pending.get(event.call_id)
        if pending is None or pending.decided.done() or event.approval.digest != pending.request.digest:
            return
        # A few seconds past the expiry, for the approval's own deny to arrive; never past approval_s.
        left = (event.approval.expires_at - utcnow()).total_seconds() + self.timeouts.decision_s
        pending.approval = "open"
        pending.deadline = self.loop.time() + max(0.0, min(left, self.timeouts.approval_s))

    async def _publish_outcome(self, request: ToolCallRequested, outcome: CallOutcome) -> None:
        event = ToolCallCompleted.of(request, outcome.status, result=outcome.result, reason=outcome.reason)
        try:
            await self.conn.publish(subjects.tool_completed(self.tenant, self.workspace), event)
        except Exception:
            log.exception("could not publish the outcome of %s", request.call_id)

    async def on_decided(self, event: ToolCallDecided) -> None:
        pending = self._pending.get(event.call_id)
        if pending is None or pending.decided.done():
            return
        decision = event.decision.decision
        try:
            event.decision.verify(self.keyring, issuers={"policy", "approval"})
            issuer = self.keyring.keys[event.decision.key_id][0]  # who signed it: a verified key's issuer
            if decision.digest != pending.request.digest or decision.call_id != pending.request.call_id:
                raise SignatureError("the decision names another call")
            if decision.expires_at <= utcnow():
                raise SignatureError("the decision has expired")
        except SignatureError as exc:
            log.warning("ignoring decision for %s: %s", event.call_id, exc)
            return
        pending.decisions.append((issuer, time.time_ns(), decision))
        if decision.verdict == "approve":
            # The approval service answers later with its own decision; it must take the call up first.
            if not pending.approval:
                pending.approval = "asked"
                pending.deadline = max(pending.deadline, self.loop.time() + self.timeouts.decision_s)
            return
        pending.decided.set_result(decision)

    async def on_completed(self, event: ToolCallCompleted) -> None:
        pending = self._pending.get(event.call_id)
        if pending is not None and not pending.completed.done():
            pending.completed.set_result(event)
            if not pending.decided.done() and event.status in ("denied", "refused"):
                # A denial can arrive as an outcome (broker) before or without a decision we trust.
                pending.decided.set_result(_Refusal(event.reason))


@dataclass(frozen=True)
class _Refusal:
    reason: str
    verdict: str = "deny"


# What the planner's gateway follows. Malformed events are reported by the services that own them (and kept
# by the audit trail); the planner only listens. Part of the planner role's bus permissions.
GATEWAY_ROUTES = RouteTable(
    role="planner",
    worker=True,
    routes=(
        Route("cad.v1.tool.decided.{tenant}", ToolCallDecided, ToolGateway.on_decided, malformed="ignore"),
        # the approval service took up a call policy sent for approval: wait until it expires
        Route("cad.v1.approval.requested.{tenant}", ApprovalRequested, ToolGateway.on_approval_requested,
              malformed="ignore"),
        Route("cad.v1.tool.completed.{tenant}.{workspace}", ToolCallCompleted, ToolGateway.on_completed,
              malformed="ignore"),
    ),
    publishes=(
        "cad.v1.tool.requested.{tenant}",
        "cad.v1.tool.completed.{tenant}.{workspace}",
        # closes a call it stopped waiting for, so that nothing runs it (its own tenant/workspace's calls only)
        *call_claim_subjects(),
    ),
)


_gateway: ToolGateway | None = None


def install_gateway(gateway: ToolGateway | None) -> None:
    """The planner process installs its gateway before running Hermes; the plugin uses it."""
    global _gateway
    _gateway = gateway


def current_gateway() -> ToolGateway | None:
    return _gateway


async def connect_gateway(settings: BusSettings, *, tenant: str, workspace: str, keyring: Keyring,
                          timeouts: GatewayTimeouts) -> ToolGateway:
    conn = await EventConnection.connect(settings, name=f"planner-{tenant}-{workspace}")
    gateway = ToolGateway(conn, asyncio.get_running_loop(), tenant=tenant, workspace=workspace, keyring=keyring,
                          timeouts=timeouts)
    await gateway.start()
    return gateway
