"""Starting an approval, and answering one: what the service's handlers and its desk call on Temporal."""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy

from caduceus_approval.domain import Answer, ApprovalAction, ApprovalRequest, ApprovalState, workflow_id
from caduceus_approval.workflows import ApprovalWorkflow


async def request_approval(client: Client, request: ApprovalRequest, task_queue: str,
                           rpc_timeout: timedelta | None = None) -> WorkflowHandle:
    """Start the call's approval workflow. Raises WorkflowAlreadyStartedError for a call already asked about."""
    return await client.start_workflow(
        ApprovalWorkflow.run, request, id=request.workflow_id, task_queue=task_queue,
        # One approval per call, ever: a finished approval is never reopened.
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE, rpc_timeout=rpc_timeout,
    )


async def answer(client: Client, tenant: str, call_id: str, verdict: Answer, action: ApprovalAction,
                 rpc_timeout: timedelta | None = None) -> ApprovalState:
    """Approve or deny the call. Raises WorkflowUpdateFailedError (with the reason) when the answer cannot count,
    RPCError when there is no open approval for the call."""
    handle = client.get_workflow_handle_for(ApprovalWorkflow.run, workflow_id(tenant, call_id))
    update = ApprovalWorkflow.approve if verdict == "approve" else ApprovalWorkflow.deny
    return await handle.execute_update(update, action, rpc_timeout=rpc_timeout)


async def approve(client: Client, tenant: str, call_id: str, action: ApprovalAction) -> ApprovalState:
    return await answer(client, tenant, call_id, "approve", action)


async def deny(client: Client, tenant: str, call_id: str, action: ApprovalAction) -> ApprovalState:
    return await answer(client, tenant, call_id, "deny", action)
