"""The approval service on the real bus and the real Temporal dev server: an `approve` decision opens an
approval people are told about, and a decision it cannot trust or match opens none."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from caduceus_approval.app import HEALTH_SUBJECT
from caduceus_bus import EventConnection
from caduceus_contracts import Signer, load_keyring, subjects

from .conftest import TENANT, ask

pytestmark = pytest.mark.timeout(180)


async def health(conn: EventConnection) -> bytes:
    """The service's health answer; b"" while it is not yet subscribed (or still importing)."""
    try:
        return (await conn.nc.request(HEALTH_SUBJECT, b"", timeout=1)).data
    except (NoRespondersError, NatsTimeout):
        return b""


async def wait_health(conn: EventConnection, expected: bytes = b"ok", timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while await health(conn) != expected:
            await asyncio.sleep(0.1)


async def approve_by_api(ui_url: str, token: str, call_id: str, digest: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=ui_url, timeout=10) as api:
        return await api.post(f"/api/approvals/{call_id}/approve", json={"digest": digest},
                              headers={"Authorization": f"Bearer {token}"})


async def test_approve_decision_opens_an_approval_and_notifies_the_requester(approval, bus) -> None:
    asked = approval.ask()
    await asked.publish(bus.conn)
    notice = (await bus.notices_for(asked.call_id, 1))[0]
    assert (notice.session_id, notice.text) == ("sess-1", "waiting for approval from admin for terminal, expires in 10 min")
    requested = await bus.approval_event(asked.call_id, "approval.requested")
    view = requested.approval
    assert (view.requester, view.args, view.approvers, view.quorum) == ("alice", {"command": "rm -rf build"},
                                                                        ("carol", "dave"), 1)
    assert view.conversation == "please clean up the build directory"
    answered = await approve_by_api(approval.ui_url, approval.token("carol"), asked.call_id, asked.digest)
    assert answered.status_code == 200
    published = await bus.verdict_on(asked.call_id)
    assert published.decision.verify(load_keyring(approval.keys_dir), issuers={"approval"}) == published.decision.decision
    assert (await bus.notices_for(asked.call_id, 2))[1].text == "terminal call approved: approved by carol"


async def test_approve_not_signed_by_policy_is_refused_and_opens_nothing(approval, bus) -> None:
    fake = ask(approval.identity, Signer.generate("policy"))  # a "policy" key nobody trusts
    await fake.publish(bus.conn)
    error = await asyncio.wait_for(bus.errors.get(), 10)
    assert error.service == "approval" and "is not from policy" in error.reason
    await asyncio.sleep(0.5)
    assert approval.service.inbox.get(TENANT, fake.call_id) is None


async def test_a_decision_whose_request_never_came_is_denied(approval, bus) -> None:
    asked = approval.ask()
    await bus.conn.publish(subjects.tool_decided(TENANT), asked.decided)  # the request itself never published
    decision = (await bus.verdict_on(asked.call_id, timeout=30)).decision.decision
    assert decision.verdict == "deny" and "did not see call" in decision.reason


