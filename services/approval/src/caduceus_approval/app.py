"""Wiring: the bus subscribers, the Temporal link and its worker, built the same way by `__main__` and tests."""

from __future__ import annotations

import asyncio
import contextlib

from faststream.nats import NatsBroker, NatsMessage

from caduceus_approval.activities import ApprovalActivities
from caduceus_approval.handlers import Approvals, PolicyKeys, on_tool_decided
from caduceus_approval.settings import ApprovalSettings
from caduceus_approval.temporal_link import TemporalLink
from caduceus_bus import EventPublisher, ensure_event_stream, make_broker
from caduceus_contracts import ensure_signer, subjects

SERVICE = "approval"
HEALTH_SUBJECT = f"caduceus.health.{SERVICE}"


class ApprovalService:
    """A built approval service; `start()` connects to the bus and begins reaching for Temporal."""

    def __init__(self, settings: ApprovalSettings) -> None:
        self.settings = settings
        self.broker: NatsBroker = make_broker(settings, SERVICE)
        self.publisher = EventPublisher(self.broker, settings, SERVICE)
        signer = ensure_signer(settings.keys_dir, SERVICE)
        self.temporal = TemporalLink(settings, ApprovalActivities(self.publisher.publish, signer,
                                                                  settings.decision_ttl_s))
        self.approvals = Approvals(keys=PolicyKeys(settings.keys_dir), signer=signer, temporal=self.temporal,
                                   window_s=settings.approval_window_s, decision_ttl_s=settings.decision_ttl_s)
        self._temporal_task: asyncio.Task[None] | None = None
        self._subscribe()

    def _subscribe(self) -> None:
        broker, publisher, approvals, temporal = self.broker, self.publisher, self.approvals, self.temporal

        # no_reply: a JetStream publish is a request; an automatic empty reply would reach the publisher as its ack.
        @broker.subscriber(subjects.TOOL_DECIDED_ALL, queue=SERVICE, no_reply=True)
        async def tool_decided(msg: NatsMessage) -> None:
            await on_tool_decided(msg.raw_message.subject, msg.body, publisher, approvals)

        @broker.subscriber(HEALTH_SUBJECT)
        async def health(msg: NatsMessage) -> bytes:
            if temporal.connected.is_set():
                return b"ok"
            return f"waiting for Temporal at {temporal.address}".encode()

    async def start(self) -> None:
        await self.broker.connect()
        await ensure_event_stream(self.broker, self.settings)
        await self.broker.start()
        self._temporal_task = asyncio.create_task(self.temporal.run(), name="approval-temporal-link")

    async def stop(self) -> None:
        if self._temporal_task is not None:
            self._temporal_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._temporal_task
        await self.broker.stop()


def build(settings: ApprovalSettings | None = None) -> ApprovalService:
    """The service from settings (the environment by default). Raises OSError when the keys dir is unusable."""
    return ApprovalService(settings or ApprovalSettings())
