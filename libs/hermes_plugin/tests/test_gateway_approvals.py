"""The planner's gateway when policy says `approve`: it waits for the approval service, and fails closed when
none takes the call up, or when the approval it opened never decides. And what the gateway records of a decision
on the call's span."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from datetime import timedelta

import pytest
from nats.aio.msg import Msg
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes

from caduceus_bus import BusSettings, EventConnection, ensure_used_decisions
from caduceus_contracts import (
    ApprovalRequested,
    ApprovalView,
    Decision,
    Keyring,
    SessionGrant,
    SignedDecision,
    SignedGrant,
    Signer,
    ToolCallDecided,
    ToolCallRequested,
    parse_event,
    subjects,
    utcnow,
)
from caduceus_embedded.testing import until_routed
from caduceus_hermes_plugin import GatewayTimeouts, ToolGateway
from caduceus_hermes_plugin import gateway as gateway_module

pytestmark = pytest.mark.timeout(60)
POLICY, IDENTITY = Signer.generate("policy"), Signer.generate("identity")


async def gateway_with_policy(nats_url: str, *, opens_approval_for_s: float | None, verdict: str = "approve"):
    """A gateway (decision bound 1 s) and a policy stand-in that answers every call with a signed `verdict`;
    with opens_approval_for_s, an approval service stand-in opens an approval that never decides."""
    keyring = Keyring()
    keyring.trust("policy", POLICY.private_key.public_key())
    conn = await EventConnection.connect(BusSettings(nats_url=nats_url), "test-planner")
    gateway = ToolGateway(conn, asyncio.get_running_loop(), tenant="acme", workspace="default", keyring=keyring,
                          timeouts=GatewayTimeouts(decision_s=1.0, completion_s=5.0, approval_s=30.0))
    await gateway.start()
    now = utcnow()
    gateway.bind_session("s-1", SignedGrant.issue(IDENTITY, SessionGrant(
        tenant="acme", workspace="default", user="alice", roles=("member",), channel="cli", session_id="s-1",
        issued_at=now, expires_at=now + timedelta(minutes=5))))
    stand_in = await EventConnection.connect(BusSettings(nats_url=nats_url), "test-policy")
    await stand_in.ensure_stream()
    await ensure_used_decisions(stand_in.js)  # as the broker does before it starts a planner

    async def decide(msg: Msg) -> None:
        request = parse_event(msg.data, expect=ToolCallRequested)
        decision = Decision(tenant="acme", workspace="default", session_id="s-1", call_id=request.call_id,
                            tool=request.tool, digest=request.digest, verdict=verdict, reason="needs an admin",
                            policy_ids=("admins-approve-deletes",), pack_version="pack-7",
                            expires_at=utcnow() + timedelta(seconds=60))
        await stand_in.publish(subjects.tool_decided("acme"), ToolCallDecided(
            tenant="acme", call_id=request.call_id, workspace="default",
            decision=SignedDecision.issue(POLICY, decision)))
        if opens_approval_for_s is not None:
            opened = utcnow()
            view = ApprovalView(workflow_id="w", tenant="acme", call_id=request.call_id, workspace="default",
                                session_id="s-1", tool=request.tool, args=request.args, digest=request.digest,
                                requester="alice", reason="needs an admin", approvers=("carol",), quorum=1,
                                opened_at=opened, expires_at=opened + timedelta(seconds=opens_approval_for_s))
            await stand_in.publish(subjects.approval("requested", "acme"),
                                   ApprovalRequested(tenant="acme", call_id=request.call_id, approval=view))

    await stand_in.subscribe(subjects.tool_requested("acme"), decide)
    await until_routed(stand_in.nc, conn.nc)  # the gateway's first request must not come before the stand-in
    return gateway, [conn, stand_in]


@asynccontextmanager
async def gateway_with_policy_running(nats_url: str, *, opens_approval_for_s: float | None, verdict: str = "approve"):
    """gateway_with_policy, its connections closed however the test ends: a policy stand-in left running would
    answer every later test's calls on the same server."""
    gateway, conns = await gateway_with_policy(nats_url, opens_approval_for_s=opens_approval_for_s, verdict=verdict)
    try:
        yield gateway
    finally:
        for conn in conns:
            await conn.close()


async def test_an_approval_nobody_takes_up_is_denied_after_the_decision_bound(nats_server) -> None:
    async with gateway_with_policy_running(nats_server.url, opens_approval_for_s=None) as gateway:
        outcome = await asyncio.to_thread(gateway.request_call, "terminal", {"command": "rm -f x"}, session_id="s-1")
    assert outcome.status == "denied"
    assert outcome.reason == "the approval service did not take up the approval within 1 s; denied (fail closed)"


async def test_an_open_approval_is_waited_for_past_the_decision_bound_until_it_expires(nats_server) -> None:
    async with gateway_with_policy_running(nats_server.url, opens_approval_for_s=2.5) as gateway:
        started = asyncio.get_running_loop().time()
        outcome = await asyncio.to_thread(gateway.request_call, "terminal", {"command": "rm -f x"}, session_id="s-1")
        waited = asyncio.get_running_loop().time() - started
    assert outcome.status == "denied"
    assert outcome.reason == "no approval decision arrived before the approval expired; denied (fail closed)"
    assert waited > 2.5  # longer than the 1 s decision bound: it waited for people


async def test_a_decision_is_recorded_on_the_calls_span_with_published_genai_names_only(nats_server,
                                                                                      monkeypatch) -> None:
    provider, exporter = TracerProvider(), InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(gateway_module, "tracer", provider.get_tracer("test"))
    async with gateway_with_policy_running(nats_server.url, opens_approval_for_s=None, verdict="deny") as gateway:
        outcome = await asyncio.to_thread(gateway.request_call, "terminal", {"command": "rm -f x"}, session_id="s-1")
    assert outcome.status == "denied"
    (span,) = exporter.get_finished_spans()
    assert span.name == "execute_tool terminal"
    assert {key: span.attributes[key] for key in ("gen_ai.operation.name", "gen_ai.tool.name", "gen_ai.tool.type")} \
        == {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "terminal", "gen_ai.tool.type": "function"}
    assert span.attributes["gen_ai.tool.call.id"]
    (event,) = span.events
    assert event.name == "gen_ai.evaluation.result"
    assert dict(event.attributes) == {
        "gen_ai.evaluation.name": "caduceus-policy", "gen_ai.evaluation.score.label": "deny",
        "gen_ai.evaluation.explanation": "needs an admin", "security_rule.name": "admins-approve-deletes",
        "security_rule.version": "pack-7"}
    # Every gen_ai.* name is one the installed semantic conventions publish; none from the unmerged guardrail drafts.
    published = {value for name, value in vars(gen_ai_attributes).items() if name.startswith("GEN_AI_")}
    used = {key for key in [*span.attributes, *event.attributes] if key.startswith("gen_ai.")}
    assert used <= published, used - published
