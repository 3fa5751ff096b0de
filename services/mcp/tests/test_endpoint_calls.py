"""How the MCP endpoint waits for a governed call: the decisions and outcomes arrive as the bus delivers them
(signed decisions, completed events); what a client is answered, and when it asks again."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caduceus_contracts import (
    Decision,
    SessionGrant,
    SignedDecision,
    SignedGrant,
    Signer,
    ToolCallCompleted,
    ToolCallDecided,
    ToolCallRequested,
    utcnow,
)
from caduceus_mcp.endpoint import GovernedCalls

IDENTITY, POLICY, APPROVAL = Signer.generate("identity"), Signer.generate("policy"), Signer.generate("approval")


def grant(user: str = "alice") -> tuple[SignedGrant, SessionGrant]:
    now = utcnow()
    payload = SessionGrant(tenant="acme", workspace="default", user=user, roles=("member",), channel="mcp",
                           session_id=f"mcp-{user}", issued_at=now, expires_at=now + timedelta(minutes=5))
    return SignedGrant.issue(IDENTITY, payload), payload


class Bus:
    """What the endpoint publishes, and a way to answer it as policy, approval and the broker would."""

    def __init__(self) -> None:
        self.requests: list[ToolCallRequested] = []
        self.calls: GovernedCalls | None = None
        # The ledger of calls (caduceus_bus.claims, tested on a real server in test_closed_calls.py): who wrote
        # each call's key first, the gateway ("ran") or the endpoint closing it ("closed").
        self.ledger: dict[str, str] = {}

    async def publish(self, subject: str, request: ToolCallRequested) -> None:
        self.requests.append(request)

    async def close(self, request: ToolCallRequested) -> bool:
        return self.ledger.setdefault(request.call_id, "closed") == "closed"

    def governed(self, **timeouts: float) -> GovernedCalls:
        self.calls = GovernedCalls(self.publish, self.close, **timeouts)
        return self.calls

    def decide(self, request: ToolCallRequested, verdict: str, signer: Signer = POLICY,
               reason: str = "policy said so") -> None:
        decision = Decision(tenant=request.tenant, workspace=request.workspace, session_id=request.session_id,
                            call_id=request.call_id, tool=request.tool, digest=request.digest, verdict=verdict,
                            reason=reason, expires_at=utcnow() + timedelta(minutes=1))
        assert self.calls is not None
        self.calls.on_event(ToolCallDecided(tenant=request.tenant, call_id=request.call_id,
                                            workspace=request.workspace,
                                            decision=SignedDecision.issue(signer, decision)))

    def complete(self, request: ToolCallRequested, status: str, result: str = "", reason: str = "",
                 tenant: str | None = None) -> None:
        assert self.calls is not None
        completed = ToolCallCompleted.of(request, status, result=result, reason=reason)
        if tenant is not None:
            completed = completed.model_copy(update={"tenant": tenant})
        self.calls.on_event(completed)


@pytest.fixture()
def bus() -> Bus:
    bus = Bus()
    bus.governed(decision_timeout_s=0.5, approval_wait_s=0.3, call_timeout_s=1.0)
    return bus


async def first_request(bus: Bus) -> ToolCallRequested:
    for _ in range(100):
        if bus.requests:
            return bus.requests[-1]
        await asyncio.sleep(0.01)
    raise AssertionError("no tool call was requested")


async def test_an_allowed_call_returns_the_upstreams_result(bus: Bus) -> None:
    assert bus.calls is not None
    call = asyncio.create_task(bus.calls.call(*grant(), "mcp__notes__read", {"name": "todo"}))
    request = await first_request(bus)
    assert (request.tool, request.args, request.grant.grant.user) == ("mcp__notes__read", {"name": "todo"}, "alice")
    assert request.digest == request.computed_digest()
    bus.decide(request, "allow")
    bus.complete(request, "ok", result="buy milk")
    outcome = await call
    assert (outcome.status, outcome.text, outcome.is_error) == ("ok", "buy milk", False)


async def test_a_denied_call_says_why(bus: Bus) -> None:
    assert bus.calls is not None
    call = asyncio.create_task(bus.calls.call(*grant(), "mcp__notes__delete", {}))
    request = await first_request(bus)
    bus.decide(request, "deny", reason="deleting notes is not allowed")
    bus.complete(request, "denied", reason="deleting notes is not allowed")
    outcome = await call
    assert outcome.is_error and outcome.text == "denied: deleting notes is not allowed"


async def test_an_upstream_error_result_tells_the_client_what_the_upstream_said(bus: Bus) -> None:
    assert bus.calls is not None
    call = asyncio.create_task(bus.calls.call(*grant(), "mcp__notes__echo", {"text": "x"}))
    request = await first_request(bus)
    bus.decide(request, "allow")
    bus.complete(request, "error", result="note store is read-only", reason="MCP server notes reported an error")
    outcome = await call
    assert outcome.is_error
    assert outcome.text == "error: MCP server notes reported an error: note store is read-only"


async def test_no_decision_denies_and_nothing_is_left_waiting(bus: Bus) -> None:
    assert bus.calls is not None
    outcome = await bus.calls.call(*grant(), "mcp__notes__read", {})
    assert outcome.status == "denied" and "policy did not decide within 0.5 s" in outcome.text
    await bus.calls.call(*grant(), "mcp__notes__read", {})
    assert len(bus.requests) == 2  # asked again: a call nobody decided is not remembered


async def test_a_call_nobody_decided_is_closed_so_that_a_late_decision_cannot_run_it(bus: Bus) -> None:
    assert bus.calls is not None
    outcome = await bus.calls.call(*grant(), "mcp__notes__read", {})
    assert outcome.status == "denied"
    assert bus.ledger == {bus.requests[0].call_id: "closed"}  # the gateway's take of it now fails


async def test_a_call_the_gateway_took_as_the_decision_bound_passed_is_answered_with_its_result(bus: Bus) -> None:
    """The decision came (and was dispatched) just as the endpoint stopped waiting: the client gets the result,
    never "denied, nothing ran" about a call that runs."""
    assert bus.calls is not None
    call = asyncio.create_task(bus.calls.call(*grant(), "mcp__notes__read", {"name": "todo"}))
    request = await first_request(bus)
    bus.ledger[request.call_id] = "ran d-1"  # the gateway took it; its decision never reached the endpoint
    await asyncio.sleep(0.7)  # past the 0.5 s decision bound
    bus.complete(request, "ok", result="buy milk")
    outcome = await call
    assert (outcome.status, outcome.text) == ("ok", "buy milk")


async def test_a_decided_call_nobody_took_is_closed_when_its_outcome_does_not_come(bus: Bus) -> None:
    assert bus.calls is not None
    call = asyncio.create_task(bus.calls.call(*grant(), "mcp__notes__read", {}))
    request = await first_request(bus)
    bus.decide(request, "allow")
    outcome = await call
    assert outcome.status == "error"
    assert outcome.text == "no outcome within 1 s; the gateway never took the call, and now it never will"
    assert bus.ledger == {request.call_id: "closed"}


async def test_waiting_for_approval_then_the_same_call_again_gets_the_result_without_asking_twice(
        bus: Bus) -> None:
    assert bus.calls is not None
    first = asyncio.create_task(bus.calls.call(*grant(), "mcp__notes__write", {"text": "hi"}))
    request = await first_request(bus)
    bus.decide(request, "approve", reason="first use of mcp__notes__write needs an admin")
    outcome = await first
    assert outcome.status == "waiting" and outcome.is_error
    assert outcome.text.startswith("waiting for approval: first use of mcp__notes__write needs an admin")
    assert "Call the tool again with the same arguments" in outcome.text

    bus.decide(request, "allow", signer=APPROVAL, reason="carol approved")
    bus.complete(request, "ok", result="written")
    again = await bus.calls.call(*grant(), "mcp__notes__write", {"text": "hi"})
    assert (again.status, again.text) == ("ok", "written")
    assert len(bus.requests) == 1


async def test_a_call_waiting_when_the_endpoint_stops_is_answered_call_again_not_cut(bus: Bus) -> None:
    calls = bus.governed(decision_timeout_s=30, approval_wait_s=30, call_timeout_s=30)
    waiting = asyncio.create_task(calls.call(*grant(), "mcp__notes__write", {"text": "hi"}))
    bus.decide(await first_request(bus), "approve")
    await asyncio.sleep(0.1)
    calls.wind_down()
    outcome = await asyncio.wait_for(waiting, 2)
    assert outcome.status == "waiting"
    assert "Call the tool again with the same arguments to get its outcome" in outcome.text
    assert bus.ledger == {}  # not closed: the call goes on, for the client's next call


async def test_other_arguments_or_another_person_are_another_call(bus: Bus) -> None:
    assert bus.calls is not None
    first = asyncio.create_task(bus.calls.call(*grant(), "mcp__notes__write", {"text": "hi"}))
    bus.decide(await first_request(bus), "approve")
    await first
    await asyncio.gather(bus.calls.call(*grant(), "mcp__notes__write", {"text": "other"}),
                         bus.calls.call(*grant("bob"), "mcp__notes__write", {"text": "hi"}))
    assert len(bus.requests) == 3


async def test_an_outcome_from_another_tenant_is_ignored(bus: Bus) -> None:
    assert bus.calls is not None
    call = asyncio.create_task(bus.calls.call(*grant(), "mcp__notes__read", {}))
    request = await first_request(bus)
    bus.decide(request, "allow")
    bus.complete(request, "ok", result="forged", tenant="globex")
    outcome = await call
    assert outcome.status == "error" and "forged" not in outcome.text


async def test_a_native_tool_is_refused_and_never_requested(bus: Bus) -> None:
    assert bus.calls is not None
    for tool in ("terminal", "write_file", "mcp_notes_read", "MCP__notes__read"):
        outcome = await bus.calls.call(*grant(), tool, {"command": "rm -rf /"})
        assert outcome.status == "refused" and "is not one of this endpoint's tools" in outcome.text
    assert bus.requests == []


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                    max_leaves=20)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=st.dictionaries(st.text(), JSON, max_size=5))
def test_hostile_arguments_are_governed_or_refused_never_a_crash(args) -> None:
    async def run() -> None:
        bus = Bus()
        bus.governed(decision_timeout_s=0.01, approval_wait_s=0.01, call_timeout_s=0.01)
        outcome = await bus.calls.call(*grant(), "mcp__notes__write", args)
        if outcome.status == "refused":
            assert bus.requests == [] and outcome.text.startswith("the arguments cannot be governed")
        else:
            assert outcome.status == "denied"  # nobody decided: denied, and the request was exactly these args
            assert bus.requests[0].args == args and bus.requests[0].digest == bus.requests[0].computed_digest()

    asyncio.run(run())
