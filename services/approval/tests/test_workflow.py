"""ApprovalWorkflow on Temporal's time-skipping test server: quorum, separation of duties, expiry, escalation,
reminders, and every answer that must not count. Outcomes and announcements go to the real bus."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from caduceus_approval.activities import ApprovalActivities
from caduceus_approval.domain import (
    DESK_ISSUER,
    EXPIRED_REASON,
    ApprovalAction,
    ApprovalRequest,
    Panel,
    sign_answer,
)
from caduceus_approval.starter import answer, request_approval
from caduceus_approval.worker import build_worker
from caduceus_approval.workflows import ApprovalWorkflow
from caduceus_bus import BusSettings, EventConnection
from caduceus_contracts import Signer, call_digest, ensure_signer, load_keyring, new_id
from caduceus_embedded.binaries import find_binary

TENANT = "acme"
WINDOW = timedelta(minutes=15)
DESK = Signer.generate(DESK_ISSUER)
ARGS = {"command": "rm -rf build"}
DIGEST = call_digest(tenant=TENANT, workspace="default", session="sess-1", tool="terminal", args=ARGS)


@pytest.fixture(scope="module")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    environment = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(find_binary("temporal-test-server")))
    yield environment
    await environment.shutdown()


@pytest.fixture(scope="module")
def approval_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("approval-keys")


@pytest.fixture(scope="module")
async def worker(env: WorkflowEnvironment, nats_server, approval_keys: Path) -> AsyncIterator[str]:
    """One worker for the module: approvals a test leaves open still get their timers' activities run
    (the test server does not skip time while an activity waits for a worker)."""
    conn = await EventConnection.connect(BusSettings(nats_url=nats_server.url), "approval-worker-test")
    task_queue = f"approvals-{new_id()}"
    activities = ApprovalActivities(conn.publish, ensure_signer(approval_keys, "approval"), decision_ttl_s=60)
    async with build_worker(env.client, activities, task_queue):
        yield task_queue
    await conn.close()


def pending(panel: Panel = Panel(approvers=("carol",)), **terms) -> ApprovalRequest:
    """A request by alice for `rm -rf build`, open for WINDOW, that only DESK-signed answers can decide."""
    return ApprovalRequest(
        tenant=TENANT, workspace="default", session_id="sess-1", call_id=new_id(), tool="terminal", digest=DIGEST,
        reason="commands that delete data need an admin's approval", window_s=WINDOW.total_seconds(),
        requester="alice", args=ARGS, panel=panel, groups=("admin",), desk_key=DESK.public_pem().decode(), **terms)


async def say(env, request: ApprovalRequest, verdict: str, approver: str, *, digest: str = DIGEST,
              signer: Signer = DESK, comment: str = ""):
    action = sign_answer(signer, TENANT, request.call_id, verdict, ApprovalAction(digest, approver, comment))
    return await answer(env.client, TENANT, request.call_id, verdict, action)


async def refused(env, request: ApprovalRequest, verdict: str, approver: str, **kwargs) -> str:
    with pytest.raises(WorkflowUpdateFailedError) as caught:
        await say(env, request, verdict, approver, **kwargs)
    return caught.value.cause.message


async def test_approval_allows_the_call_with_a_decision_signed_by_approval(env, worker, bus, approval_keys) -> None:
    request = pending()
    handle = await request_approval(env.client, request, worker)
    state = await say(env, request, "approve", "carol", comment="looks fine")
    assert (state.status, state.resolution) == ("approved", "approved by carol (carol: looks fine)")
    assert (await handle.result()).status == "approved"

    published = await bus.verdict_on(request.call_id)
    decision = published.decision.decision
    assert (decision.verdict, decision.reason) == ("allow", "approved by carol (carol: looks fine)")
    assert (decision.digest, decision.session_id, decision.tool) == (DIGEST, "sess-1", "terminal")
    assert published.decision.verify(load_keyring(approval_keys), issuers={"approval"}) == published.decision.decision
    assert [n.text for n in await bus.notices_for(request.call_id, 2)] == [
        "waiting for approval from admin for terminal, expires in 15 min",
        "terminal call approved: approved by carol (carol: looks fine)"]


async def test_quorum_needs_two_distinct_approvers(env, worker, bus) -> None:
    request = pending(Panel(approvers=("carol", "dave", "erin"), quorum=2))
    handle = await request_approval(env.client, request, worker)
    first = await say(env, request, "approve", "carol")
    assert first.status == "pending"
    assert "carol has already answered" in await refused(env, request, "approve", "carol")
    assert (await bus.approval_event(request.call_id, "approval.voted")).approval.votes[0].approver == "carol"
    second = await say(env, request, "approve", "dave")
    assert (second.status, second.resolution) == ("approved", "approved by carol, dave")
    assert (await handle.result()).status == "approved"
    assert (await bus.verdict_on(request.call_id)).decision.decision.verdict == "allow"


async def test_one_deny_denies_even_with_a_quorum_pending(env, worker, bus) -> None:
    request = pending(Panel(approvers=("carol", "dave"), quorum=2))
    await request_approval(env.client, request, worker)
    await say(env, request, "approve", "carol")
    state = await say(env, request, "deny", "dave", comment="not in prod hours")
    assert (state.status, state.resolution) == ("denied", "denied by dave: not in prod hours")
    decision = (await bus.verdict_on(request.call_id)).decision.decision
    assert (decision.verdict, decision.reason) == ("deny", "denied by dave: not in prod hours")


async def test_requester_may_not_approve_their_own_call(env, worker, bus) -> None:
    request = pending(Panel(approvers=("alice", "carol")))
    handle = await request_approval(env.client, request, worker)
    assert "separation of duties" in await refused(env, request, "approve", "alice")
    assert await handle.query(ApprovalWorkflow.status) == "pending"


async def test_self_approval_counts_when_the_terms_allow_it(env, worker, bus) -> None:
    request = pending(Panel(approvers=("alice", "carol"), self_approval=True))
    await request_approval(env.client, request, worker)
    assert (await say(env, request, "approve", "alice")).status == "approved"


async def test_no_answer_before_expiry_denies(env, worker, bus) -> None:
    request = pending()
    handle = await request_approval(env.client, request, worker)
    state = await handle.result()  # the test server skips the 15 minutes
    assert (state.status, state.resolution) == ("expired", EXPIRED_REASON)
    decision = (await bus.verdict_on(request.call_id)).decision.decision
    assert (decision.verdict, decision.reason) == ("deny", EXPIRED_REASON)


async def test_escalation_lets_the_second_group_answer_after_the_delay(env, worker, bus) -> None:
    request = pending(Panel(approvers=("carol",), escalation=("olivia",)), escalate_to=("owner",),
                      escalate_after_s=300)
    handle = await request_approval(env.client, request, worker)
    assert "olivia is not one of the approvers" in await refused(env, request, "approve", "olivia")
    await env.sleep(timedelta(minutes=6))
    escalated = await bus.approval_event(request.call_id, "approval.escalated")
    assert escalated.approval.escalated and "olivia" in escalated.approval.approvers
    notices = [n.text for n in await bus.notices_for(request.call_id, 2)]
    assert notices[1].startswith("no answer yet: escalated to admin, owner, expires in")
    assert (await say(env, request, "approve", "olivia")).status == "approved"
    assert (await handle.result()).resolution == "approved by olivia"


async def test_reminders_name_the_approvers_who_have_not_answered(env, worker, bus) -> None:
    request = pending(Panel(approvers=("carol", "dave"), quorum=2), remind_every_s=240)
    handle = await request_approval(env.client, request, worker)
    await say(env, request, "approve", "carol")
    await env.sleep(timedelta(minutes=5))
    reminded = await bus.approval_event(request.call_id, "approval.reminded")
    assert reminded.remind == ("dave",)
    await say(env, request, "deny", "dave")
    assert (await handle.result()).status == "denied"


async def test_answers_that_must_not_count_are_refused_with_a_reason(env, worker, bus) -> None:
    request = pending(Panel(approvers=("carol",)))
    handle = await request_approval(env.client, request, worker)
    other = call_digest(tenant=TENANT, workspace="default", session="sess-1", tool="terminal",
                        args={"command": "rm -rf /"})
    assert "approve exactly the call you reviewed" in await refused(env, request, "approve", "carol", digest=other)
    assert "bob is not one of the approvers" in await refused(env, request, "approve", "bob")
    # Anyone who can reach Temporal could name carol; only the desk, after verifying her, can sign for her.
    forged = await refused(env, request, "approve", "carol", signer=Signer.generate(DESK_ISSUER))
    assert "not signed by the approval desk" in forged
    assert await handle.query(ApprovalWorkflow.status) == "pending"
    # Sent to Temporal around the desk, it is still on the audit trail: who it named and why it did not count.
    reported = await bus.approval_event(request.call_id, "approval.refused")
    assert (reported.approver, reported.answer) == ("carol", "approve")
    assert "not signed by the approval desk" in reported.reason and reported.channel.startswith("temporal")
    assert (await handle.query(ApprovalWorkflow.view)).votes == ()
    with pytest.raises(WorkflowUpdateFailedError) as unsigned:  # no signature at all: the same
        await answer(env.client, TENANT, request.call_id, "deny", ApprovalAction(DIGEST, "dave", "bye"))
    assert "not signed by the approval desk" in unsigned.value.cause.message
    assert await handle.query(ApprovalWorkflow.status) == "pending"
    assert len([e for e in bus.approvals if e.kind == "approval.refused"]) >= 1

    await say(env, request, "deny", "carol", comment="not today")
    assert "already been decided" in await refused(env, request, "approve", "carol")
    assert (await handle.result()).status == "denied"


async def test_approval_after_expiry_is_refused(env, worker, bus) -> None:
    request = pending()
    handle = await request_approval(env.client, request, worker)
    await env.sleep(WINDOW + timedelta(minutes=1))
    with pytest.raises(RPCError):  # the workflow closed as expired: there is nothing left to approve
        await say(env, request, "approve", "carol")
    assert (await handle.result()).resolution == EXPIRED_REASON
