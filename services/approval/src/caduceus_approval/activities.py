"""The approval workflow's only I/O: tell the bus about the approval, publish its signed outcome, and report
answers sent to Temporal around the approval desk.

Event ids are derived from the workflow run and step, so a retried activity stores each event once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from temporalio import activity

from caduceus_approval.domain import (
    ApprovalState,
    decided_event,
    human_duration,
    outcome_of,
    stable_id,
    view_of,
)
from caduceus_contracts import (
    ApprovalEscalated,
    ApprovalRefused,
    ApprovalReminded,
    ApprovalRequested,
    ApprovalResolved,
    ApprovalVoted,
    ChatNotice,
    Event,
    Signer,
    subjects,
    utcnow,
)

PUBLISH_OUTCOME = "publish_outcome"
ANNOUNCE = "announce"
REPORT_REFUSAL = "report_refusal"

# EventConnection.publish, or a BusService's publish (the same, once it is connected).
Publish = Callable[[str, Event], Awaitable[None]]

log = logging.getLogger(__name__)

_EVENTS = {"requested": ApprovalRequested, "voted": ApprovalVoted, "escalated": ApprovalEscalated,
           "reminded": ApprovalReminded, "resolved": ApprovalResolved}


@dataclass(frozen=True)
class PublishOutcome:
    state: ApprovalState
    workflow_id: str
    run_id: str


@dataclass(frozen=True)
class Announcement:
    """One step of an approval to tell the bus about: requested, voted, escalated, reminded or resolved."""

    kind: str
    state: ApprovalState
    workflow_id: str
    run_id: str
    sequence: int
    remind: tuple[str, ...] = ()


def notice_text(kind: str, state: ApprovalState) -> str | None:
    """What the requester reads in their conversation at this step, or None for steps they need not see."""
    view = view_of(state)
    if kind == "requested":
        left = human_duration((view.expires_at - view.opened_at).total_seconds())
        return f"waiting for approval from {view.asked_of} for {view.tool}, expires in {left}"
    if kind == "escalated":
        left = human_duration((view.expires_at - utcnow()).total_seconds())
        return f"no answer yet: escalated to {view.asked_of}, expires in {left}"
    if kind == "resolved":
        return f"{view.tool} call {state.status}: {state.resolution}"
    return None


@dataclass(frozen=True)
class Refusal:
    """An answer the workflow refused because the approval desk did not sign it: published for audit."""

    tenant: str
    call_id: str
    approver: str
    answer: str
    channel: str
    reason: str
    event_id: str


class ApprovalActivities:
    """Activities bound to the service's publisher and its `approval` signing key."""

    def __init__(self, publish: Publish, signer: Signer, decision_ttl_s: float) -> None:
        self._publish = publish
        self._signer = signer
        self._decision_ttl_s = decision_ttl_s

    @activity.defn(name=PUBLISH_OUTCOME)
    async def publish_outcome(self, job: PublishOutcome) -> None:
        """Publish ToolCallDecided (allow or deny) for the approval's call; retries store one event."""
        request, outcome = job.state.request, outcome_of(job.state)
        event = decided_event(request, outcome, self._signer, now=utcnow(), ttl_s=self._decision_ttl_s,
                              event_id=stable_id(job.workflow_id, job.run_id))
        await self._publish(subjects.tool_decided(request.tenant), event)
        log.info("call %s in %s: %s (%s)", request.call_id, request.tenant, outcome.verdict, outcome.reason)

    @activity.defn(name=ANNOUNCE)
    async def announce(self, job: Announcement) -> None:
        """Publish the approval event of this step, and the requester's chat notice when there is one."""
        request = job.state.request
        event_id = stable_id(job.workflow_id, job.run_id, job.kind, str(job.sequence))
        extra = {"remind": job.remind} if job.kind == "reminded" else {}
        event = _EVENTS[job.kind](tenant=request.tenant, call_id=request.call_id, approval=view_of(job.state),
                                  event_id=event_id, **extra)
        await self._publish(subjects.approval(job.kind, request.tenant), event)
        text = notice_text(job.kind, job.state)
        if text is not None:
            notice = ChatNotice(tenant=request.tenant, session_id=request.session_id, call_id=request.call_id,
                                text=text, event_id=stable_id(event_id, "notice"))
            await self._publish(subjects.chat_notice(request.tenant, request.session_id), notice)

    @activity.defn(name=REPORT_REFUSAL)
    async def report_refusal(self, job: Refusal) -> None:
        """Publish ApprovalRefused for an answer that reached the workflow without the desk's signature."""
        event = ApprovalRefused(tenant=job.tenant, call_id=job.call_id, approver=job.approver, answer=job.answer,
                                channel=job.channel, reason=job.reason, event_id=job.event_id)
        await self._publish(subjects.approval("refused", job.tenant), event)
        log.warning("answer %s on call %s naming %s@%s sent around the approval desk, refused: %s", job.answer,
                    job.call_id, job.approver, job.tenant, job.reason)
