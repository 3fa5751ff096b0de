"""A call runs once, and never after its requester was told it was denied.

The planner's gateway stops waiting for a decision after its bound and says "denied, nothing ran"; a decision can
still come a moment later (a slow policy replica, a skewed clock, a redelivery) and be dispatched. Whoever writes
the call's key first in the ledger (caduceus_bus.claims) wins: the planner closing it, or the executor taking it.
Here a real planner gateway and a real sandboxed executor race on a real nats-server."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest

from caduceus_broker.settings import BrokerSettings, ModelSettings
from caduceus_broker.workers import WorkerPool
from caduceus_bus import BusSettings, EventConnection
from caduceus_contracts import (
    Decision,
    SessionGrant,
    SignedDecision,
    SignedGrant,
    Signer,
    ToolCallCompleted,
    ToolCallDispatched,
    ToolCallRequested,
    call_digest,
    ensure_signer,
    load_keyring,
    parse_event,
    subjects,
    utcnow,
)
from caduceus_hermes_plugin import GatewayTimeouts, ToolGateway

pytestmark = pytest.mark.timeout(180)
TENANT, WORKSPACE = "acme", "closing"


@pytest.fixture(scope="module")
async def race(nats_server, tmp_path_factory):
    """A real executor for acme/closing, and what is published about its calls."""
    state = tmp_path_factory.mktemp("closing-state")
    policy = ensure_signer(state / "keys", "policy")
    identity = ensure_signer(state / "keys", "identity")
    bus = BusSettings(nats_url=nats_server.url)
    conn = await EventConnection.connect(bus, "test-closing")
    await conn.ensure_stream()
    settings = BrokerSettings(state_dir=state)

    async def report(*_):
        pass

    pool = WorkerPool(settings, bus, ModelSettings(), conn.nc, report)
    await pool.ensure(TENANT, WORKSPACE)
    requested: asyncio.Queue[ToolCallRequested] = asyncio.Queue()
    completed: list[ToolCallCompleted] = []

    async def on_requested(msg):
        await requested.put(parse_event(msg.data, expect=ToolCallRequested))

    async def on_completed(msg):
        completed.append(parse_event(msg.data, expect=ToolCallCompleted))

    await conn.subscribe(subjects.tool_requested(TENANT), on_requested)
    await conn.subscribe(subjects.tool_completed(TENANT, WORKSPACE), on_completed)
    yield conn, policy, identity, state, requested, completed, settings.workspaces / TENANT / WORKSPACE
    await pool.stop_all()
    await conn.close()


async def planner(conn: EventConnection, identity: Signer, state, session: str,
                  decision_s: float = 1.0) -> ToolGateway:
    """A planner's gateway with a short decision bound, its session bound to alice's grant."""
    gateway = ToolGateway(conn, asyncio.get_running_loop(), tenant=TENANT, workspace=WORKSPACE,
                          keyring=load_keyring(state / "keys"),
                          timeouts=GatewayTimeouts(decision_s=decision_s, completion_s=30.0))
    await gateway.start()
    now = utcnow()
    gateway.bind_session(session, SignedGrant.issue(identity, SessionGrant(
        tenant=TENANT, workspace=WORKSPACE, user="alice", roles=("member",), channel="cli", session_id=session,
        issued_at=now, expires_at=now + timedelta(minutes=5))))
    return gateway


def allowed(policy: Signer, request: ToolCallRequested) -> ToolCallDispatched:
    """What the broker dispatches for a call policy allowed (a new decision each time)."""
    decision = Decision(tenant=TENANT, workspace=WORKSPACE, session_id=request.session_id, call_id=request.call_id,
                        tool=request.tool, digest=request.digest, verdict="allow", reason="allowed",
                        expires_at=utcnow() + timedelta(seconds=60))
    return ToolCallDispatched(tenant=TENANT, call_id=request.call_id, workspace=WORKSPACE,
                              session_id=request.session_id, tool=request.tool, args=request.args,
                              decision=SignedDecision.issue(policy, decision))


async def outcome_of(completed: list[ToolCallCompleted], call_id: str, by: str) -> ToolCallCompleted:
    """The executor's outcome of the call: it ran (executed_by names it) or it was refused."""
    for _ in range(600):
        found = [c for c in completed if c.call_id == call_id and (c.executed_by or c.status == "refused")]
        if found:
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no outcome from {by} for {call_id}")


async def test_a_decision_after_the_planner_said_denied_does_not_run_the_call(race) -> None:
    conn, policy, identity, state, requested, completed, workspace = race
    gateway = await planner(conn, identity, state, "s-late")
    marker = workspace / "late-decision-ran.txt"
    try:
        outcome = await asyncio.to_thread(gateway.request_call, "terminal", {"command": f"touch {marker}"},
                                          session_id="s-late")
        assert (outcome.status, outcome.reason) == ("denied", "policy did not decide within 1 s; denied (fail closed)")
        request = await asyncio.wait_for(requested.get(), 5)
        await conn.publish(subjects.tool_dispatched(TENANT, WORKSPACE), allowed(policy, request))  # the late one
        refused = await outcome_of(completed, request.call_id, "the executor")
    finally:
        await gateway.stop()
    assert refused.status == "refused"
    assert f"call {request.call_id} was already taken" in refused.reason
    assert not marker.exists()


async def test_a_call_taken_as_the_bound_passed_answers_with_its_result_not_denied(race) -> None:
    """The executor took the call (its decision never reached the planner) and runs past the decision bound."""
    conn, policy, identity, state, requested, completed, workspace = race
    gateway = await planner(conn, identity, state, "s-slow", decision_s=2.0)  # the executor takes it well before

    async def dispatch_without_telling_the_planner():
        request = await asyncio.wait_for(requested.get(), 5)
        await conn.publish(subjects.tool_dispatched(TENANT, WORKSPACE), allowed(policy, request))
        return request

    try:
        dispatching = asyncio.create_task(dispatch_without_telling_the_planner())
        outcome = await asyncio.to_thread(gateway.request_call, "terminal",
                                          {"command": "sleep 4 && echo slow-result"}, session_id="s-slow")
        request = await dispatching
    finally:
        await gateway.stop()
    assert outcome.status == "ok", outcome
    assert "slow-result" in json.loads(outcome.result)["output"]
    told = [c.status for c in completed if c.call_id == request.call_id]
    assert told == ["ok"]  # and no "denied" from the planner for a call that ran


async def test_two_decisions_for_one_call_run_it_once(race) -> None:
    """Policy decided the same call twice (its request was redelivered): two valid decisions, one run."""
    conn, policy, identity, state, requested, completed, workspace = race
    counter = workspace / "twice.txt"
    args = {"command": f"echo x >> {counter}"}
    now = utcnow()
    request = ToolCallRequested(
        tenant=TENANT, workspace=WORKSPACE, session_id="s-twice", tool="terminal", args=args,
        digest=call_digest(tenant=TENANT, workspace=WORKSPACE, session="s-twice", tool="terminal", args=args),
        grant=SignedGrant.issue(identity, SessionGrant(
            tenant=TENANT, workspace=WORKSPACE, user="alice", roles=("member",), channel="cli", session_id="s-twice",
            issued_at=now, expires_at=now + timedelta(minutes=5))))
    await conn.publish(subjects.tool_dispatched(TENANT, WORKSPACE), allowed(policy, request))
    first = await outcome_of(completed, request.call_id, "the executor")
    assert first.status == "ok", first
    completed.clear()
    await conn.publish(subjects.tool_dispatched(TENANT, WORKSPACE), allowed(policy, request))
    second = await outcome_of(completed, request.call_id, "the executor")
    assert second.status == "refused" and "was already taken" in second.reason
    assert counter.read_text().count("x") == 1
