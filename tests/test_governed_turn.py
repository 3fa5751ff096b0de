"""One governed chat turn through real Hermes Agent on the embedded stack, and the ways it must fail closed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest
from nats.aio.msg import Msg

from caduceus.commands.demo import DEMO_MESSAGE, OUTSIDE_PATH, evaluate
from caduceus_audit.adapters.store import AuditStore
from caduceus_bus import EventConnection
from caduceus_client import ChatClient
from caduceus_contracts import ErrorEvent, ToolCallDispatched, ToolCallRequested, parse_event
from caduceus_identity.devtoken import mint_dev_token

pytestmark = pytest.mark.timeout(240)


@pytest.fixture()
async def client(stack):
    chat = await ChatClient.connect(stack.info.bus_settings("client"))
    yield chat
    await chat.close()


def token_for(stack, user: str = "alice", tenant: str = "acme") -> str:
    return mint_dev_token(stack.info.dev_issuer_url, tenant, user)


def wait_for_audit(stack, session_id: str, at_least: int, timeout: float = 15.0) -> int:
    store = AuditStore(stack.info.audit_db_url)
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        count = store.count(tenant="acme", session_id=session_id)
        if count >= at_least:
            break
        time.sleep(0.2)
    return count


async def test_demo_turn_runs_the_allowed_call_and_never_the_denied_one(stack, client):
    existed = OUTSIDE_PATH.exists()
    transcript = await client.send(tenant="acme", token=token_for(stack), text=DEMO_MESSAGE, watch=True, timeout=180)
    audited = wait_for_audit(stack, transcript.session_id, len(transcript.event_ids))
    checks = evaluate(transcript, audited, outside_written=OUTSIDE_PATH.exists() and not existed)
    assert all(c.ok for c in checks), [(c.what, c.detail) for c in checks if not c.ok]
    terminal = next(c for c in transcript.calls.values() if c.tool == "terminal")
    workspace = stack.layout.workspaces / "acme" / "default"
    assert str(workspace) in json.loads(terminal.outcome.result)["output"]
    write = next(c for c in transcript.calls.values() if c.tool == "write_file")
    assert "writes-stay-in-workspace" in write.decision.policy_ids
    assert "workspace" in transcript.reply.text.lower() or "hello from the executor" in transcript.reply.text


async def test_each_model_call_of_a_turn_goes_through_the_gateway_and_reports_its_usage(stack, client):
    transcript = await client.send(tenant="acme", token=token_for(stack), text=DEMO_MESSAGE, timeout=180)
    store = AuditStore(stack.info.audit_db_url)
    deadline = time.monotonic() + 15
    usage, decided = [], []
    while time.monotonic() < deadline:
        records = list(store.records(tenant="acme", session_id=transcript.session_id))
        decided = [json.loads(r.body) for r in store.records(tenant="acme") if r.kind == "model.decided"]
        usage = [json.loads(r.body) for r in records if r.kind == "model.usage"]
        if len(usage) >= 2:
            break
        time.sleep(0.2)
    # the demo turn is three model calls (two tool calls, then the answer), each decided by policy first
    assert len(usage) >= 2, "the gateway reported no model usage for the turn"
    calls = {u["call_id"] for u in usage}
    assert calls <= {d["call_id"] for d in decided}
    assert all(u["user"] == "alice" and u["upstream"] == "default" for u in usage)
    assert all(u["prompt_tokens"] > 0 and u["completion_tokens"] > 0 for u in usage)


async def test_invalid_token_is_refused_with_a_reason(stack, client):
    transcript = await client.send(tenant="acme", token="not-a-jwt", text="hello", timeout=30)
    assert transcript.reply.status == "refused"
    assert "token" in transcript.reply.text.lower()
    assert "not-a-jwt" not in transcript.reply.text


async def test_unknown_tenant_is_refused(stack, client):
    transcript = await client.send(tenant="globex", token=token_for(stack), text="hello", timeout=30)
    assert transcript.reply.status == "refused"
    assert "globex" in transcript.reply.text


async def test_malformed_messages_become_error_events_and_services_keep_working(stack, client):
    # Each hostile message comes from a credential allowed to publish there: a chat client, a planner, policy.
    conn = await EventConnection.connect(stack.info.bus_settings("client"), "test-hostile")
    errors: asyncio.Queue[ErrorEvent] = asyncio.Queue()

    async def on_error(msg: Msg) -> None:
        await errors.put(parse_event(msg.data, expect=ErrorEvent))

    await conn.subscribe("cad.v1.error.acme.>", on_error)
    planner = await EventConnection.connect(stack.worker_bus_settings("planner", "acme", "default"), "test-planner")
    policy = await EventConnection.connect(stack.bus_settings("policy"), "test-policy")
    hostile = [(conn, "cad.v1.chat.in.acme", b"{not json"),
               (planner, "cad.v1.tool.requested.acme", b'{"kind": "tool.requested"}'),
               (policy, "cad.v1.tool.decided.acme", b'{"kind": "mystery", "tenant": "acme"}')]
    for sender, subject, body in hostile:
        await sender.js.publish(subject, body)
    await planner.close()
    await policy.close()
    # Each subscriber of a subject refuses on its own (approval also reads decisions): wait for all we expect.
    expected = {"identity", "policy", "broker"}
    services = set()
    deadline = time.monotonic() + 15
    while not expected <= services and time.monotonic() < deadline:
        try:
            services.add((await asyncio.wait_for(errors.get(), 5)).service)
        except TimeoutError:
            break
    await conn.close()
    assert expected <= services
    transcript = await client.send(tenant="acme", token=token_for(stack), text="hello", timeout=60)
    assert transcript.reply.status == "ok"


async def test_slow_policy_denies_the_call_and_a_late_decision_never_runs(stack, client):
    policy = stack.services["policy"].process
    conn = await EventConnection.connect(stack.info.bus_settings("client"), "test-dispatch-watch")
    dispatched: list[str] = []

    async def on_dispatch(msg: Msg) -> None:
        dispatched.append(parse_event(msg.data, expect=ToolCallDispatched).call_id)

    async def on_request(msg: Msg) -> None:
        # hung, not dead (the stack will not restart it), once the model call that asked for this tool was decided
        if not hung:
            hung.append(True)
            os.kill(policy.pid, signal.SIGSTOP)

    hung: list[bool] = []
    await conn.subscribe("cad.v1.tool.dispatched.acme.>", on_dispatch)
    await conn.subscribe("cad.v1.tool.requested.acme", on_request)
    try:
        transcript = await client.send(tenant="acme", token=token_for(stack), text=DEMO_MESSAGE, watch=True,
                                       timeout=120)
    finally:
        os.kill(policy.pid, signal.SIGCONT)
    assert transcript.reply.status == "ok"
    assert transcript.calls, "the agent asked for no tool call"
    # the model call after the denied tool call is refused too: the gateway cannot ask policy (fail closed)
    assert "policy did not decide this model call" in transcript.reply.text
    for call in transcript.calls.values():
        assert call.outcome is not None and call.outcome.status == "denied", call
        assert "did not decide within" in call.outcome.reason
        assert not call.outcome.executed_by
    await asyncio.sleep(3)  # the resumed policy now decides the stale requests
    await conn.close()
    assert not set(dispatched) & set(transcript.calls), "a decision that came too late was dispatched"


async def test_one_trace_covers_the_turn_its_calls_decisions_and_execution(stack, client, otlp_collector):
    transcript = await client.send(tenant="acme", token=token_for(stack), text=DEMO_MESSAGE, watch=True, timeout=180)
    assert transcript.reply.status == "ok"
    deadline = time.monotonic() + 15
    wanted = {"caduceus-identity", "caduceus-broker", "caduceus-planner", "caduceus-policy", "caduceus-executor"}
    while time.monotonic() < deadline:
        spans = otlp_collector.spans()
        by_trace: dict[str, set[str]] = {}
        for service, _, trace_id in spans:
            by_trace.setdefault(trace_id, set()).add(service)
        if any(wanted <= services for services in by_trace.values()):
            break
        await asyncio.sleep(0.5)
    assert any(wanted <= services for services in by_trace.values()), by_trace


async def test_policy_killed_mid_turn_denies_the_call_and_the_restarted_policy_decides_again(stack, client):
    policy = stack.services["policy"].process
    conn = await EventConnection.connect(stack.info.bus_settings("client"), "test-policy-kill")
    dispatched: list[str] = []
    in_flight: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_dispatch(msg: Msg) -> None:
        dispatched.append(parse_event(msg.data, expect=ToolCallDispatched).call_id)

    async def on_request(msg: Msg) -> None:
        request = parse_event(msg.data, expect=ToolCallRequested)
        if not in_flight.done():
            os.kill(policy.pid, signal.SIGKILL)  # it holds this request undecided, and dies with it
            in_flight.set_result(request.call_id)

    async def on_model_decided(msg: Msg) -> None:
        if not stopped:  # so the kill lands after the tool request reached it, before any decision
            stopped.append(True)
            os.kill(policy.pid, signal.SIGSTOP)

    stopped: list[bool] = []
    await conn.subscribe("cad.v1.tool.dispatched.acme.>", on_dispatch)
    await conn.subscribe("cad.v1.tool.requested.acme", on_request)
    await conn.subscribe("cad.v1.model.decided.acme", on_model_decided)
    turn = asyncio.create_task(client.send(tenant="acme", token=token_for(stack), text=DEMO_MESSAGE, watch=True,
                                           timeout=120))
    try:
        killed_call = await asyncio.wait_for(in_flight, 60)
    finally:
        if policy.poll() is None:
            os.kill(policy.pid, signal.SIGKILL)
    transcript = await turn
    assert transcript.reply.status == "ok"
    outcome = transcript.calls[killed_call].outcome
    assert outcome is not None and outcome.status == "denied" and not outcome.executed_by
    assert "did not decide within" in outcome.reason
    assert killed_call not in dispatched
    # Calls after it were decided by the restarted policy, or denied: none ran without an allow.
    for call in transcript.calls.values():
        if call.outcome is not None and call.outcome.executed_by:
            assert call.decision is not None and call.decision.verdict == "allow"

    deadline = time.monotonic() + 60
    while stack.services["policy"].process is policy or stack.services["policy"].exit_code() is not None:
        assert time.monotonic() < deadline, "the stack did not restart the killed policy service"
        await asyncio.sleep(0.2)
    after = await client.send(tenant="acme", token=token_for(stack), text=DEMO_MESSAGE, watch=True, timeout=120)
    await conn.close()
    terminal = next(c for c in after.calls.values() if c.tool == "terminal")
    assert terminal.decision is not None and terminal.decision.verdict == "allow"
    assert terminal.outcome is not None and terminal.outcome.status == "ok"


async def test_a_pack_published_by_the_operator_is_live_for_the_next_call(stack, client, tmp_path):
    from typer.testing import CliRunner

    from caduceus.cli import app

    shipped = (stack.layout.root / "policy.yaml").read_text()
    candidate = tmp_path / "policy.yaml"
    candidate.write_text(shipped.replace('version: "2026-12-04.1"', 'version: "hot-reloaded.1"'))
    published = await asyncio.to_thread(CliRunner().invoke, app, ["policy", "publish", str(candidate),
                                                                  "--state-dir", str(stack.layout.root)])
    assert published.exit_code == 0, published.output
    deadline = time.monotonic() + 30
    while True:
        transcript = await client.send(tenant="acme", token=token_for(stack), text=DEMO_MESSAGE, watch=True,
                                       timeout=120)
        versions = {c.decision.pack_version for c in transcript.calls.values() if c.decision is not None}
        if versions == {"hot-reloaded.1"} or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert versions == {"hot-reloaded.1"}, versions
