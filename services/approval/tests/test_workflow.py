"""ApprovalWorkflow on Temporal's time-skipping test server: approve allows, silence expires into deny,
and an answer for another digest does not count. The outcome is published on the real bus."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from caduceus_approval.activities import ApprovalActivities
from caduceus_approval.domain import EXPIRED_REASON, ApprovalAction, request_for
from caduceus_approval.starter import approve, deny, request_approval
from caduceus_approval.worker import build_worker
from caduceus_approval.workflows import ApprovalWorkflow
from caduceus_contracts import Signer, ensure_signer, load_keyring, new_id
from caduceus_embedded.binaries import find_binary

TENANT = "acme"
WINDOW = timedelta(minutes=15)


@pytest.fixture(scope="module")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    environment = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(find_binary("temporal-test-server")))
    yield environment
    await environment.shutdown()


@pytest.fixture()
async def worker(env: WorkflowEnvironment, bus, keys_dir: Path) -> AsyncIterator[str]:
    task_queue = f"approvals-{new_id()}"
    activities = ApprovalActivities(bus.conn.publish, ensure_signer(keys_dir, "approval"), decision_ttl_s=60)
    async with build_worker(env.client, activities, task_queue):
        yield task_queue


@pytest.fixture()
def pending_request(policy_signer: Signer, make_approve):
    """A fresh approval request for a policy `approve` decision, open for WINDOW."""
    return lambda: request_for(make_approve(policy_signer), window_s=WINDOW.total_seconds())


async def test_approve_allows_the_call(env, worker, bus, keys_dir, pending_request) -> None:
    request = pending_request()
    handle = await request_approval(env.client, request, worker)
    outcome = await approve(env.client, TENANT, request.call_id, ApprovalAction(request.digest, "carol", "looks fine"))
    assert (outcome.verdict, outcome.reason) == ("allow", "approved by carol: looks fine")
    assert (await handle.result()).verdict == "allow"

    published = await bus.verdict_on(request.call_id)
    decision = published.decision.decision
    assert (decision.verdict, decision.reason) == ("allow", "approved by carol: looks fine")
    assert (decision.digest, decision.session_id, decision.tool) == (request.digest, "sess-1", "write_file")
    assert published.decision.verify(load_keyring(keys_dir)) == "approval"


async def test_no_answer_before_expiry_denies(env, worker, bus, pending_request) -> None:
    request = pending_request()
    handle = await request_approval(env.client, request, worker)
    outcome = await handle.result()  # the test server skips the 15 minutes
    assert (outcome.verdict, outcome.reason) == ("deny", EXPIRED_REASON)
    published = await bus.verdict_on(request.call_id)
    assert (published.decision.decision.verdict, published.decision.decision.reason) == ("deny", "approval expired")


async def test_approval_for_another_digest_does_not_count(env, worker, bus, pending_request, policy_signer,
                                                          make_approve) -> None:
    request = pending_request()
    handle = await request_approval(env.client, request, worker)
    other = make_approve(policy_signer, args={"path": "/etc/passwd", "content": "x"}).decision.decision.digest
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await approve(env.client, TENANT, request.call_id, ApprovalAction(other, "carol"))
    assert "approve exactly the call you reviewed" in refused.value.cause.message
    assert await handle.query(ApprovalWorkflow.status) == "pending"

    outcome = await deny(env.client, TENANT, request.call_id, ApprovalAction(request.digest, "carol", "not today"))
    assert (outcome.verdict, outcome.reason) == ("deny", "denied by carol: not today")
    with pytest.raises(WorkflowUpdateFailedError):
        await approve(env.client, TENANT, request.call_id, ApprovalAction(request.digest, "bob"))
    assert (await handle.result()).verdict == "deny"


async def test_approval_after_expiry_is_refused(env, worker, bus, pending_request) -> None:
    request = pending_request()
    handle = await request_approval(env.client, request, worker)
    await env.sleep(WINDOW + timedelta(minutes=1))
    with pytest.raises(RPCError):  # the workflow closed as expired: there is nothing left to approve
        await approve(env.client, TENANT, request.call_id, ApprovalAction(request.digest, "carol"))
    assert (await handle.result()).reason == EXPIRED_REASON
