"""The service's link to Temporal: keep trying to connect, run the worker once connected, start and answer
approvals, and rebuild the inbox from the approvals Temporal holds.

The service runs (and fails closed) while Temporal is away; it reports healthy only once connected.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from caduceus_approval.activities import Announcement, ApprovalActivities, PublishOutcome
from caduceus_approval.domain import Answer, ApprovalAction, ApprovalRequest, ApprovalState, abandoned
from caduceus_approval.settings import ApprovalSettings
from caduceus_approval.starter import answer, request_approval
from caduceus_approval.worker import build_worker
from caduceus_approval.workflows import ApprovalWorkflow
from caduceus_contracts import utcnow

log = logging.getLogger(__name__)

_UNREACHABLE = {RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED}
# How many approvals (latest first) the inbox is rebuilt from on connect.
REBUILD_LIMIT = 500
# How an approval's workflow ended without deciding, in the words the deny gives.
ENDED = {WorkflowExecutionStatus.TERMINATED: "terminated", WorkflowExecutionStatus.TIMED_OUT: "timed out",
         WorkflowExecutionStatus.CANCELED: "cancelled", WorkflowExecutionStatus.FAILED: "failed"}


class TemporalUnavailable(RuntimeError):
    """Temporal cannot be reached right now."""


class TemporalLink:
    def __init__(self, settings: ApprovalSettings, activities: ApprovalActivities,
                 on_state: Callable[[ApprovalState], None] = lambda state: None) -> None:
        self.settings = settings
        self.activities = activities
        self.on_state = on_state
        self.client: Client | None = None
        self.connected = asyncio.Event()
        self._settled: set[tuple[str, str]] = set()  # ended approvals already denied (or found decided)

    @property
    def address(self) -> str:
        return self.settings.temporal_address

    @property
    def rpc_timeout(self) -> timedelta:
        return timedelta(seconds=self.settings.temporal_rpc_timeout_s)

    async def run(self) -> None:
        """Connect (retrying), then run the worker until cancelled; reconnect if the worker stops."""
        while True:
            try:
                self.client = await Client.connect(self.address, namespace=self.settings.temporal_namespace,
                                                   connect_timeout=self.rpc_timeout)
            except RuntimeError as exc:
                log.warning("cannot reach Temporal at %s (%s); retrying in %.0fs", self.address, exc,
                            self.settings.temporal_retry_s)
                await asyncio.sleep(self.settings.temporal_retry_s)
                continue
            log.info("connected to Temporal at %s, task queue %s", self.address, self.settings.approval_task_queue)
            worker = build_worker(self.client, self.activities, self.settings.approval_task_queue)
            self.connected.set()
            rebuild = asyncio.create_task(self._rebuild(self.client), name="approval-inbox-rebuild")
            sweep = asyncio.create_task(self._deny_abandoned(self.client), name="approval-abandoned-sweep")
            try:
                await worker.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("approval worker stopped; reconnecting to Temporal")
            finally:
                rebuild.cancel()
                sweep.cancel()
                self.connected.clear()
                self.client = None
            await asyncio.sleep(self.settings.temporal_retry_s)

    def _client(self) -> Client:
        if self.client is None:
            raise TemporalUnavailable(self.address)
        return self.client

    async def start_approval(self, request: ApprovalRequest) -> WorkflowHandle:
        """Start the call's workflow. Raises TemporalUnavailable, or WorkflowAlreadyStartedError for a repeat."""
        try:
            return await request_approval(self._client(), request, self.settings.approval_task_queue,
                                          rpc_timeout=self.rpc_timeout)
        except RPCError as exc:
            if exc.status in _UNREACHABLE:
                raise TemporalUnavailable(self.address) from exc
            raise

    async def answer(self, tenant: str, call_id: str, verdict: Answer, action: ApprovalAction) -> ApprovalState:
        """Send an approve/deny update. Raises WorkflowUpdateFailedError (refused, with the reason), RPCError
        (no open approval) or TemporalUnavailable."""
        try:
            # The SDK retries an unreachable server on its own; a person waits for a bounded time only.
            async with asyncio.timeout(2 * self.settings.temporal_rpc_timeout_s):
                return await answer(self._client(), tenant, call_id, verdict, action, rpc_timeout=self.rpc_timeout)
        except TimeoutError as exc:
            raise TemporalUnavailable(self.address) from exc
        except RPCError as exc:
            if exc.status in _UNREACHABLE:
                raise TemporalUnavailable(self.address) from exc
            raise

    async def _rebuild(self, client: Client) -> None:
        """Hand every approval of this task queue to on_state: open ones by query, closed ones by result."""
        query = f"WorkflowType = 'ApprovalWorkflow' AND TaskQueue = '{self.settings.approval_task_queue}'"
        count = 0
        try:
            async for execution in client.list_workflows(query, limit=REBUILD_LIMIT, rpc_timeout=self.rpc_timeout):
                state = await self._state_of(client, execution)
                if state is not None:
                    self.on_state(state)
                    count += 1
        except RPCError as exc:
            log.warning("could not list approvals to rebuild the inbox: %s", exc)
            return
        log.info("inbox rebuilt from %d approval(s) in Temporal", count)

    async def _deny_abandoned(self, client: Client) -> None:
        """Deny the call of every approval whose workflow ended undecided: terminated or timed out in Temporal (a
        cancelled one denies itself; this catches it too if it could not). The signed deny, the resolved event
        and the requester's notice carry stable ids, so replicas doing the same are stored once."""
        query = (f"WorkflowType = 'ApprovalWorkflow' AND TaskQueue = '{self.settings.approval_task_queue}' "
                 "AND ExecutionStatus != 'Running' AND ExecutionStatus != 'Completed'")
        while True:
            try:
                async for execution in client.list_workflows(query, rpc_timeout=self.rpc_timeout):
                    if (execution.id, execution.run_id) not in self._settled:
                        await self._settle(client, execution)
            except RPCError as exc:
                log.warning("could not list ended approvals: %s", exc)
            await asyncio.sleep(self.settings.abandoned_sweep_s)

    async def _settle(self, client: Client, execution) -> None:
        handle = client.get_workflow_handle_for(ApprovalWorkflow.run, execution.id, run_id=execution.run_id)
        try:
            state = await handle.query(ApprovalWorkflow.view, rpc_timeout=self.rpc_timeout)  # replays its history
        except Exception as exc:
            log.warning("could not read ended approval %s: %s", execution.id, exc)
            return
        if state.status == "pending":
            how = ENDED.get(execution.status, "closed")
            state = abandoned(state, how, utcnow())
            await self.activities.publish_outcome(PublishOutcome(state, execution.id, execution.run_id))
            await self.activities.announce(Announcement("resolved", state, execution.id, execution.run_id, 0))
            log.warning("approval for call %s in %s was %s in Temporal undecided: denied", state.request.call_id,
                        state.request.tenant, how)
        self.on_state(state)
        self._settled.add((execution.id, execution.run_id))

    async def _state_of(self, client: Client, execution, attempts: int = 5) -> ApprovalState | None:
        """An approval's state; None when it ended other than completing, or stays unreadable."""
        handle = client.get_workflow_handle_for(ApprovalWorkflow.run, execution.id, run_id=execution.run_id)
        for attempt in range(attempts):
            try:
                if execution.status == WorkflowExecutionStatus.RUNNING:
                    # Answered by this service's own worker, which may still be starting to poll.
                    return await handle.query(ApprovalWorkflow.view, rpc_timeout=self.rpc_timeout)
                if execution.status == WorkflowExecutionStatus.COMPLETED:
                    return await handle.result(rpc_timeout=self.rpc_timeout)
                return None
            except Exception as exc:  # one unreadable approval must not hide the others
                if attempt == attempts - 1:
                    log.warning("could not read approval %s: %s", execution.id, exc)
                await asyncio.sleep(0.5)
        return None
