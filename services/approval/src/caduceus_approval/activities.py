"""The approval workflow's only I/O: sign its outcome as a Decision and publish it on the bus."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from temporalio import activity

from caduceus_approval.domain import (
    ApprovalOutcome,
    ApprovalRequest,
    decided_event,
    stable_id,
)
from caduceus_contracts import Event, Signer, subjects, utcnow

PUBLISH_OUTCOME = "publish_outcome"

# EventPublisher.publish (FastStream) and EventConnection.publish (nats-py) both fit.
Publish = Callable[[str, Event], Awaitable[None]]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishOutcome:
    request: ApprovalRequest
    outcome: ApprovalOutcome
    workflow_id: str
    run_id: str


class ApprovalActivities:
    """Activities bound to the service's publisher and its `approval` signing key."""

    def __init__(self, publish: Publish, signer: Signer, decision_ttl_s: float) -> None:
        self._publish = publish
        self._signer = signer
        self._decision_ttl_s = decision_ttl_s

    @activity.defn(name=PUBLISH_OUTCOME)
    async def publish_outcome(self, job: PublishOutcome) -> None:
        """Publish ToolCallDecided (allow or deny) for the approved call; retries store one event."""
        event = decided_event(job.request, job.outcome, self._signer, now=utcnow(), ttl_s=self._decision_ttl_s,
                              event_id=stable_id(job.workflow_id, job.run_id))
        await self._publish(subjects.tool_decided(job.request.tenant), event)
        log.info("call %s in %s: %s (%s)", job.request.call_id, job.request.tenant, job.outcome.verdict,
                 job.outcome.reason)
