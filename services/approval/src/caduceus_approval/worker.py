"""The Temporal worker that runs approval workflows and their activity."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.worker import Worker

from caduceus_approval.activities import ApprovalActivities
from caduceus_approval.workflows import ApprovalWorkflow

TASK_QUEUE = "caduceus-approvals"


def build_worker(client: Client, activities: ApprovalActivities, task_queue: str = TASK_QUEUE) -> Worker:
    """A worker for ApprovalWorkflow on task_queue; run it with `await worker.run()` or `async with worker`."""
    return Worker(client, task_queue=task_queue, workflows=[ApprovalWorkflow],
                  activities=[activities.publish_outcome])
