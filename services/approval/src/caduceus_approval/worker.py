"""The Temporal worker that runs approval workflows and their activities."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from caduceus_approval.activities import ApprovalActivities
from caduceus_approval.workflows import ApprovalWorkflow

TASK_QUEUE = "caduceus-approvals"

# Signature checks in update validators use `cryptography`, a native module: load it once, outside the sandbox.
_RUNNER = SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default.with_passthrough_modules("cryptography"))


def build_worker(client: Client, activities: ApprovalActivities, task_queue: str = TASK_QUEUE) -> Worker:
    """A worker for ApprovalWorkflow on task_queue; run it with `await worker.run()` or `async with worker`."""
    return Worker(client, task_queue=task_queue, workflows=[ApprovalWorkflow], workflow_runner=_RUNNER,
                  activities=[activities.publish_outcome, activities.announce, activities.report_refusal])
