"""The service's link to Temporal: keep trying to connect, run the worker once connected, start approvals.

The service runs (and fails closed) while Temporal is away; it reports healthy only once connected.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from caduceus_approval.activities import ApprovalActivities
from caduceus_approval.domain import ApprovalRequest
from caduceus_approval.settings import ApprovalSettings
from caduceus_approval.starter import request_approval
from caduceus_approval.worker import build_worker

log = logging.getLogger(__name__)

_UNREACHABLE = {RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED}


class TemporalUnavailable(RuntimeError):
    """Temporal cannot be reached right now."""


class TemporalLink:
    def __init__(self, settings: ApprovalSettings, activities: ApprovalActivities) -> None:
        self.settings = settings
        self.activities = activities
        self.client: Client | None = None
        self.connected = asyncio.Event()

    @property
    def address(self) -> str:
        return self.settings.temporal_address

    async def run(self) -> None:
        """Connect (retrying), then run the worker until cancelled; reconnect if the worker stops."""
        while True:
            try:
                self.client = await Client.connect(
                    self.address, namespace=self.settings.temporal_namespace,
                    connect_timeout=timedelta(seconds=self.settings.temporal_rpc_timeout_s))
            except RuntimeError as exc:
                log.warning("cannot reach Temporal at %s (%s); retrying in %.0fs", self.address, exc,
                            self.settings.temporal_retry_s)
                await asyncio.sleep(self.settings.temporal_retry_s)
                continue
            log.info("connected to Temporal at %s, task queue %s", self.address, self.settings.approval_task_queue)
            worker = build_worker(self.client, self.activities, self.settings.approval_task_queue)
            self.connected.set()
            try:
                await worker.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("approval worker stopped; reconnecting to Temporal")
            finally:
                self.connected.clear()
                self.client = None
            await asyncio.sleep(self.settings.temporal_retry_s)

    async def start_approval(self, request: ApprovalRequest) -> WorkflowHandle:
        """Start the call's workflow. Raises TemporalUnavailable, or WorkflowAlreadyStartedError for a repeat."""
        client = self.client
        if client is None:
            raise TemporalUnavailable(self.address)
        try:
            return await request_approval(client, request, self.settings.approval_task_queue,
                                          rpc_timeout=timedelta(seconds=self.settings.temporal_rpc_timeout_s))
        except RPCError as exc:
            if exc.status in _UNREACHABLE:
                raise TemporalUnavailable(self.address) from exc
            raise
