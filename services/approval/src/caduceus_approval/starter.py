"""Starting an approval, and answering one: what the service and (until the approver UI exists) people call.

`python -m caduceus_approval.starter approve|deny --tenant T --call-id C --digest D --approver NAME [--comment ...]`
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import timedelta

from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDReusePolicy
from temporalio.service import RPCError

from caduceus_approval.domain import (
    ApprovalAction,
    ApprovalOutcome,
    ApprovalRequest,
    workflow_id,
)
from caduceus_approval.settings import ApprovalSettings
from caduceus_approval.workflows import ApprovalWorkflow


async def request_approval(client: Client, request: ApprovalRequest, task_queue: str,
                           rpc_timeout: timedelta | None = None) -> WorkflowHandle:
    """Start the call's approval workflow. Raises WorkflowAlreadyStartedError for a call already asked about."""
    return await client.start_workflow(
        ApprovalWorkflow.run, request, id=request.workflow_id, task_queue=task_queue,
        # One approval per call, ever: a finished approval is never reopened.
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE, rpc_timeout=rpc_timeout,
    )


async def approve(client: Client, tenant: str, call_id: str, action: ApprovalAction) -> ApprovalOutcome:
    """Approve the call; raises WorkflowUpdateFailedError (with the reason) when the answer cannot count."""
    handle = client.get_workflow_handle_for(ApprovalWorkflow.run, workflow_id(tenant, call_id))
    return await handle.execute_update(ApprovalWorkflow.approve, action)


async def deny(client: Client, tenant: str, call_id: str, action: ApprovalAction) -> ApprovalOutcome:
    """Deny the call; raises WorkflowUpdateFailedError (with the reason) when the answer cannot count."""
    handle = client.get_workflow_handle_for(ApprovalWorkflow.run, workflow_id(tenant, call_id))
    return await handle.execute_update(ApprovalWorkflow.deny, action)


async def _answer(args: argparse.Namespace) -> int:
    settings = ApprovalSettings()
    try:
        client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    except RuntimeError as exc:
        print(f"cannot reach Temporal at {settings.temporal_address}: {exc} (set CADUCEUS_TEMPORAL_ADDRESS)",
              file=sys.stderr)
        return 2
    action = ApprovalAction(digest=args.digest, approver=args.approver, comment=args.comment)
    answer = approve if args.verb == "approve" else deny
    try:
        outcome = await answer(client, args.tenant, args.call_id, action)
    except WorkflowUpdateFailedError as exc:
        print(f"not counted: {exc.cause or exc}", file=sys.stderr)
        return 1
    except RPCError as exc:
        print(f"no open approval for call {args.call_id} of tenant {args.tenant}: {exc}", file=sys.stderr)
        return 1
    print(f"{outcome.verdict}: {outcome.reason}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m caduceus_approval.starter",
                                     description="Approve or deny one pending tool call.")
    parser.add_argument("verb", choices=["approve", "deny"])
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--call-id", required=True)
    parser.add_argument("--digest", required=True, help="the digest of the call you reviewed")
    parser.add_argument("--approver", required=True)
    parser.add_argument("--comment", default="")
    return asyncio.run(_answer(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
