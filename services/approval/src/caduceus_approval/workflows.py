"""ApprovalWorkflow: one call, bound to its digest, waits for its approvers until they decide or it expires.

`approve` and `deny` are updates (the approver learns at once whether their answer counted);
their validator refuses an answer the desk did not sign, a wrong digest, an approver who is
not on the panel, the requester (unless self-approval is allowed), a second answer from the
same person, and any answer after the decision or the expiry. An answer without the desk's
signature was sent to Temporal around the desk (by someone who can reach Temporal, naming whom
they like): the validator lets it in only so that the handler can report it (ApprovalRefused, so
audit keeps it) before refusing it; it never counts. While it waits, the workflow
escalates to a second group after a delay and reminds approvers who have not answered.
Everything it tells the world (the request, votes, escalation, reminders, the signed
outcome) is published by activities.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from caduceus_approval.activities import (
        ANNOUNCE,
        PUBLISH_OUTCOME,
        REPORT_REFUSAL,
        Announcement,
        PublishOutcome,
        Refusal,
    )
    from caduceus_approval.domain import (
        ActionRefused,
        Answer,
        ApprovalAction,
        ApprovalRequest,
        ApprovalState,
        abandoned,
        check_answer,
        desk_keyring,
        expired,
        not_from_desk,
        opened,
        reminder_for,
        stable_id,
        with_answer,
    )

_PUBLISH = {
    "start_to_close_timeout": timedelta(seconds=15),
    "schedule_to_close_timeout": timedelta(minutes=10),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=10)),
}


@workflow.defn
class ApprovalWorkflow:
    @workflow.init
    def __init__(self, request: ApprovalRequest) -> None:
        self._state = opened(request, workflow.now())
        self._desk = desk_keyring(request.desk_key)
        self._announced = 0  # announcements made (their sequence numbers)
        self._votes_announced = 0

    @workflow.run
    async def run(self, request: ApprovalRequest) -> ApprovalState:
        try:
            await self._wait_for_people(request)
        except asyncio.CancelledError:
            # Cancelled from Temporal (its Web UI, tctl): the call is denied and everyone is told, then it ends.
            if self._state.status == "pending":
                self._state = abandoned(self._state, "cancelled", workflow.now())
                await self._resolve()
            raise
        await self._resolve()
        await workflow.wait_condition(workflow.all_handlers_finished)  # a refusal being reported is reported
        return self._state

    async def _resolve(self) -> None:
        info = workflow.info()
        await workflow.execute_activity(PUBLISH_OUTCOME, PublishOutcome(self._state, info.workflow_id, info.run_id),
                                        **_PUBLISH)
        await self._announce("resolved")

    async def _wait_for_people(self, request: ApprovalRequest) -> None:
        """Until the approvers decide or it expires: announce votes, escalate, remind."""
        await self._announce("requested")
        opened_at = datetime.fromisoformat(self._state.opened_at)
        expires_at = datetime.fromisoformat(self._state.expires_at)
        escalate_at = (opened_at + timedelta(seconds=request.escalate_after_s)
                       if request.escalate_after_s and request.panel.escalation else None)
        remind_at = opened_at + timedelta(seconds=request.remind_every_s) if request.remind_every_s else None
        while self._state.status == "pending":
            due = min(t for t in (expires_at, escalate_at, remind_at) if t is not None)
            try:
                await workflow.wait_condition(
                    lambda: self._state.status != "pending" or len(self._state.votes) != self._votes_announced,
                    timeout=max((due - workflow.now()).total_seconds(), 0.001), timeout_summary="approval timer")
            except TimeoutError:
                pass
            now = workflow.now()
            if self._state.status != "pending":
                break
            if len(self._state.votes) != self._votes_announced:
                self._votes_announced = len(self._state.votes)
                await self._announce("voted")
            elif now >= expires_at:
                self._state = expired(self._state, now)
            elif escalate_at is not None and now >= escalate_at:
                self._state = replace(self._state, escalated=True)
                escalate_at = None
                await self._announce("escalated")
            elif remind_at is not None and now >= remind_at:
                await self._announce("reminded")
                remind_at = now + timedelta(seconds=request.remind_every_s or 0)

    async def _announce(self, kind: str) -> None:
        self._announced += 1
        info = workflow.info()
        await workflow.execute_activity(
            ANNOUNCE, Announcement(kind, self._state, info.workflow_id, info.run_id, self._announced,
                                   reminder_for(self._state) if kind == "reminded" else ()),
            **_PUBLISH)

    @workflow.update
    async def approve(self, action: ApprovalAction) -> ApprovalState:
        """An approver agrees; the call runs once the quorum has agreed (once, within the decision's lifetime)."""
        return await self._answer("approve", action)

    @approve.validator
    def _check_approve(self, action: ApprovalAction) -> None:
        self._validate("approve", action)

    @workflow.update
    async def deny(self, action: ApprovalAction) -> ApprovalState:
        """An approver refuses: the call is denied."""
        return await self._answer("deny", action)

    @deny.validator
    def _check_deny(self, action: ApprovalAction) -> None:
        self._validate("deny", action)

    async def _answer(self, answer: Answer, action: ApprovalAction) -> ApprovalState:
        unsigned = not_from_desk(self._state, answer, action, self._desk)
        if unsigned:
            await self._report_unsigned(answer, action, unsigned)
            raise ApplicationError(unsigned, type="ActionRefused", non_retryable=True)
        # Re-checked here: the expiry may have fired in the same workflow task, after the validator ran.
        self._check(action)
        self._state = with_answer(self._state, answer, action, workflow.now())
        return self._state

    def _validate(self, answer: Answer, action: ApprovalAction) -> None:
        if not_from_desk(self._state, answer, action, self._desk):
            return  # into the handler, which reports it and refuses it
        self._check(action)

    def _check(self, action: ApprovalAction) -> None:
        try:
            check_answer(self._state, action, now=workflow.now())
        except ActionRefused as exc:
            raise ApplicationError(str(exc), type="ActionRefused", non_retryable=True) from None

    async def _report_unsigned(self, answer: Answer, action: ApprovalAction, reason: str) -> None:
        request, info, update = self._state.request, workflow.info(), workflow.current_update_info()
        update_id = update.id if update is not None else str(workflow.uuid4())
        refusal = Refusal(tenant=request.tenant, call_id=request.call_id, approver=action.approver[:200],
                          answer=answer, channel=f"temporal (not the approval desk; said {action.channel[:40]!r})",
                          reason=reason, event_id=stable_id(info.workflow_id, info.run_id, "refused", update_id))
        await workflow.execute_activity(REPORT_REFUSAL, refusal, **_PUBLISH)

    @workflow.query
    def view(self) -> ApprovalState:
        """The approval as it stands: request, panel, votes, status, expiry."""
        return self._state

    @workflow.query
    def status(self) -> str:
        """`pending`, `approved`, `denied` or `expired`."""
        return self._state.status
