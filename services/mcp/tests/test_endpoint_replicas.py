"""Two replicas of the MCP endpoint on one bus: a client told "waiting for approval" that calls again may reach the
other replica, which takes the waiting call up (one request, one approval, one run) instead of asking again."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from caduceus_bus import BusSettings, CallClaims, EventConnection, ensure_used_decisions
from caduceus_contracts import (
    Decision,
    SessionGrant,
    SignedDecision,
    SignedGrant,
    Signer,
    ToolCallCompleted,
    ToolCallDecided,
    ToolCallRequested,
    parse_event,
    subjects,
    utcnow,
)
from caduceus_mcp.endpoint import GovernedCalls, closer, follow_calls
from caduceus_mcp.shared_calls import SharedCalls

pytestmark = pytest.mark.timeout(60)
POLICY, APPROVAL, IDENTITY = Signer.generate("policy"), Signer.generate("approval"), Signer.generate("identity")
TOOL, ARGS = "mcp__notes__write", {"text": "shared"}


class Replicas:
    """Two endpoint replicas (each its own connection, as two processes) and policy, approval and the gateway
    answering on the bus as they would."""

    def __init__(self, bus: EventConnection, replicas: list[GovernedCalls], connections: list[EventConnection]):
        self.bus = bus
        self.replicas = replicas
        self.connections = connections
        self.requests: list[ToolCallRequested] = []

    async def decide(self, request: ToolCallRequested, verdict: str, signer: Signer = POLICY) -> None:
        decision = Decision(tenant=request.tenant, workspace=request.workspace, session_id=request.session_id,
                            call_id=request.call_id, tool=request.tool, digest=request.digest, verdict=verdict,
                            reason="first use needs an admin" if verdict == "approve" else "carol approved",
                            expires_at=utcnow() + timedelta(minutes=1))
        await self.bus.publish(subjects.tool_decided(request.tenant), ToolCallDecided(
            tenant=request.tenant, call_id=request.call_id, workspace=request.workspace,
            decision=SignedDecision.issue(signer, decision)))

    async def complete(self, request: ToolCallRequested, result: str) -> None:
        await self.bus.publish(subjects.tool_completed(request.tenant, request.workspace),
                               ToolCallCompleted.of(request, "ok", result=result, executed_by="mcp-gateway"))

    async def next_request(self) -> ToolCallRequested:
        for _ in range(200):
            if self.requests:
                return self.requests.pop(0)
            await asyncio.sleep(0.025)
        raise AssertionError("no call was requested")


@pytest.fixture()
async def replicas(nats_server):
    settings = BusSettings(nats_url=nats_server.url)
    bus = await EventConnection.connect(settings, "policy-approval-gateway")
    await bus.ensure_stream()
    await ensure_used_decisions(bus.js)
    calls, connections = [], []
    for number in (1, 2):
        connection = await EventConnection.connect(settings, f"mcp-endpoint-{number}")
        governed = GovernedCalls(connection.publish, closer(CallClaims(connection.js)), decision_timeout_s=2.0,
                                 approval_wait_s=0.5, call_timeout_s=2.0,
                                 shared=await SharedCalls.open(connection, keep_s=600))
        await follow_calls(connection, governed)
        calls.append(governed)
        connections.append(connection)
    setup = Replicas(bus, calls, connections)

    async def on_requested(msg):
        setup.requests.append(parse_event(msg.data, expect=ToolCallRequested))

    await bus.subscribe(subjects.tool_requested("acme"), on_requested)
    await bus.nc.flush()
    yield setup
    for connection in (bus, *connections):
        await connection.close()


def grant(user: str) -> tuple[SignedGrant, SessionGrant]:
    now = utcnow()
    payload = SessionGrant(tenant="acme", workspace="default", user=user, roles=("member",), channel="mcp",
                           session_id=f"mcp-{user}", issued_at=now, expires_at=now + timedelta(minutes=5))
    return SignedGrant.issue(IDENTITY, payload), payload


async def test_a_call_answered_while_nobody_waited_is_returned_by_the_other_replica(replicas: Replicas) -> None:
    first, second = replicas.replicas
    waiting = asyncio.create_task(first.call(*grant("erin"), TOOL, ARGS))
    request = await replicas.next_request()
    await replicas.decide(request, "approve")
    assert (await waiting).status == "waiting"
    # the approvers answer and the gateway runs it while the client is away
    await replicas.decide(request, "allow", APPROVAL)
    await replicas.complete(request, "written once")
    await asyncio.sleep(0.3)
    again = await second.call(*grant("erin"), TOOL, ARGS)
    assert (again.status, again.text) == ("ok", "written once")
    assert replicas.requests == []  # taken up, not asked again

    # answered at the second replica: the same call at the first is a new call, not the first one's old result
    fresh = asyncio.create_task(first.call(*grant("erin"), TOOL, ARGS))
    new_request = await replicas.next_request()
    assert new_request.call_id != request.call_id
    await replicas.decide(new_request, "deny")
    await replicas.bus.publish(subjects.tool_completed("acme", "default"),
                               ToolCallCompleted.of(new_request, "denied", reason="not today"))
    assert (await fresh).text == "denied: not today"


async def test_a_call_still_waiting_is_waited_on_at_the_other_replica_without_asking_again(
        replicas: Replicas) -> None:
    first, second = replicas.replicas
    waiting = asyncio.create_task(first.call(*grant("frank"), TOOL, ARGS))
    request = await replicas.next_request()
    await replicas.decide(request, "approve")
    assert (await waiting).status == "waiting"
    elsewhere = await second.call(*grant("frank"), TOOL, ARGS)
    assert elsewhere.status == "waiting" and "first use needs an admin" in elsewhere.text
    again = asyncio.create_task(second.call(*grant("frank"), TOOL, ARGS))
    await asyncio.sleep(0.1)
    await replicas.decide(request, "allow", APPROVAL)
    await replicas.complete(request, "written")
    assert (await again).text == "written"
    assert replicas.requests == []


async def test_a_call_whose_replica_is_gone_is_closed_by_the_one_that_took_it_up(replicas: Replicas) -> None:
    """Nobody decided, and the replica that asked never answers for it (it stopped): the replica the client
    reaches next closes it once twice the decision bound has passed, so it can never run, and says so."""
    first, second = replicas.replicas
    first.decision_timeout_s = 30.0  # stands in for a replica that stopped while waiting
    second.decision_timeout_s = 2.0
    asked = asyncio.create_task(first.call(*grant("gina"), TOOL, ARGS))
    request = await replicas.next_request()
    early = await second.call(*grant("gina"), TOOL, ARGS)  # within twice the bound: the asking replica answers
    assert early.status == "error" and early.text.startswith("no decision yet for this call")
    outcome = await second.call(*grant("gina"), TOOL, ARGS)
    assert outcome.status == "denied" and "policy did not decide within 2 s" in outcome.text
    assert not await CallClaims(replicas.bus.js).close("acme", "default", request.call_id)  # closed already
    assert replicas.requests == []
    asked.cancel()
