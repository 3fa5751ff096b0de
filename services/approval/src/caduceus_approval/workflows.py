"""ApprovalWorkflow: one call, bound to its digest, waits for a person to approve or deny it until it expires.

`approve` and `deny` are updates (the approver learns at once whether their answer counted);
their validator refuses a wrong digest, an answer after the expiry and a second answer.
No answer before the expiry timer fires is a deny. The result is published by an activity.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from caduceus_approval.activities import PUBLISH_OUTCOME, PublishOutcome
    from caduceus_approval.domain import (
        ActionRefused,
        ApprovalAction,
        ApprovalOutcome,
        ApprovalRequest,
        Outcome,
        check_action,
        expired,
        outcome_of,
    )


@workflow.defn
class ApprovalWorkflow:
    @workflow.init
    def __init__(self, request: ApprovalRequest) -> None:
        self._request = request
        self._expires_at = workflow.now() + timedelta(seconds=request.window_s)
        self._outcome: ApprovalOutcome | None = None

    @workflow.run
    async def run(self, request: ApprovalRequest) -> ApprovalOutcome:
        try:
            await workflow.wait_condition(lambda: self._outcome is not None, timeout=request.window_s,
                                          timeout_summary="approval expiry")
        except TimeoutError:
            self._outcome = expired()
        outcome = self._outcome
        assert outcome is not None
        await workflow.execute_activity(
            PUBLISH_OUTCOME, PublishOutcome(request, outcome, workflow.info().workflow_id, workflow.info().run_id),
            start_to_close_timeout=timedelta(seconds=15), schedule_to_close_timeout=timedelta(minutes=10),
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
        )
        return outcome

    @workflow.update
    def approve(self, action: ApprovalAction) -> ApprovalOutcome:
        """A person approves the call: it may run (once, within the decision's lifetime)."""
        return self._decide("allow", action)

    @approve.validator
    def _check_approve(self, action: ApprovalAction) -> None:
        self._check(action)

    @workflow.update
    def deny(self, action: ApprovalAction) -> ApprovalOutcome:
        """A person denies the call."""
        return self._decide("deny", action)

    @deny.validator
    def _check_deny(self, action: ApprovalAction) -> None:
        self._check(action)

    def _decide(self, verdict: Outcome, action: ApprovalAction) -> ApprovalOutcome:
        # Re-checked here: the expiry may have fired in the same workflow task, after the validator ran.
        self._check(action)
        self._outcome = outcome_of(verdict, action)
        return self._outcome

    def _check(self, action: ApprovalAction) -> None:
        try:
            check_action(self._request, action, now=workflow.now(), expires_at=self._expires_at,
                         decided=self._outcome is not None)
        except ActionRefused as exc:
            raise ApplicationError(str(exc), type="ActionRefused", non_retryable=True) from None

    @workflow.query
    def status(self) -> str:
        """`pending`, `allow` or `deny`."""
        return self._outcome.verdict if self._outcome else "pending"

    @workflow.query
    def expires_at(self) -> str:
        """When an unanswered approval turns into a deny (ISO 8601, UTC)."""
        return self._expires_at.isoformat()
