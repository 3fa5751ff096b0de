"""Turn guardrails on the real bus: two policy replicas, the inference gateway and the scripted model playing an
agent that loops. The agent loop here does what the planner does between model calls (ask for each tool call on
the bus, wait for the decision, report the outcome), so every limit is seen where the person sees it: the turn's
reply, the denied call, the `turn.stopped` event."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from caduceus_bus import BusSettings, EventConnection
from caduceus_contracts import (
    Decision,
    SessionGrant,
    SignedGrant,
    Signer,
    ToolCallCompleted,
    ToolCallDecided,
    ToolCallRequested,
    TurnStopped,
    call_digest,
    ensure_signer,
    parse_event,
    subjects,
    utcnow,
)
from caduceus_embedded.ports import free_port
from caduceus_embedded.servers import start_scripted_model
from caduceus_inference import InferenceService, InferenceSettings, Upstream, build
from caduceus_policy.app import PolicyService
from caduceus_policy.app import build as build_policy
from caduceus_policy.settings import PolicySettings
from caduceus_web import HttpServer

pytestmark = pytest.mark.timeout(120)

PACK = textwrap.dedent("""\
    version: "guardrails-test.1"
    tenants:
      acme:
        rules:
          - {id: members-work, effect: allow, roles: [member, admin], tools: [terminal, read_file]}
        models:
          default: scripted
          routes:
            - {id: the-lab-model-is-slow, upstream: slow, workspaces: [lab]}
        guardrails:
          - {id: acme-turns, tool_calls: 4, model_calls: 20, same_call: 3, same_failing_call: 2, wall_time: 1h}
          - {id: admins-do-more, roles: [admin], tool_calls: 6}
          - {id: research-is-quick, workspaces: [research], wall_time: 2s}
          - {id: tokens-are-scarce, roles: [frugal], tokens: 40}
          - {id: lab-is-quick, workspaces: [lab], wall_time: 2s}
          - {id: chatty-is-brief, roles: [chatty], model_calls: 2}
    """)


def scenario(name: str, match: str, calls: list[tuple[str, dict[str, Any]]], done: str) -> dict[str, Any]:
    return {"name": name, "match": match,
            "steps": [{"tool_calls": [{"name": tool, "arguments": args}]} for tool, args in calls]
            + [{"content": done}]}


SCENARIOS = {"scenarios": [
    # a different command each time: only the tool-call limit stops it
    scenario("busy", "count to ten", [("terminal", {"command": f"echo {i}"}) for i in range(10)], "counted"),
    # the same command again and again: a loop making no progress
    scenario("stuck", "are we there yet", [("terminal", {"command": "ls"})] * 10, "there"),
    # the same read of a file that is not there
    scenario("failing", "read the missing file", [("read_file", {"path": "missing.txt"})] * 10, "read"),
    scenario("chat", "say hello", [], "hello there, this is a short answer"),
]}


SLOW_UNTIL_TEARDOWN = asyncio.Event()


async def take_a_minute() -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(SLOW_UNTIL_TEARDOWN.wait(), 60)


async def slow_model(request: Request) -> Response:
    """An upstream that takes its time: a word at once when streaming, then nothing for a minute."""
    body = json.loads(await request.body())
    if not body.get("stream"):
        await take_a_minute()
        return JSONResponse({})

    async def events() -> AsyncIterator[bytes]:
        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "slow",
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Thinking"}}]}
        yield f"data: {json.dumps(chunk)}\n\n".encode()
        await take_a_minute()
    return StreamingResponse(events(), media_type="text/event-stream")


@dataclass
class Recorder:
    decided: dict[str, asyncio.Future] = field(default_factory=dict)
    stopped: list[TurnStopped] = field(default_factory=list)

    async def on_event(self, msg: Any) -> None:
        event = parse_event(msg.data, subject=msg.subject)
        if isinstance(event, ToolCallDecided):
            future = self.decided.setdefault(event.call_id, asyncio.get_running_loop().create_future())
            if not future.done():
                future.set_result(event)
        elif isinstance(event, TurnStopped):
            self.stopped.append(event)

    async def decision(self, call_id: str, timeout: float = 5.0) -> Decision:
        future = self.decided.setdefault(call_id, asyncio.get_running_loop().create_future())
        decided: ToolCallDecided = await asyncio.wait_for(future, timeout)
        return decided.decision.decision


@dataclass
class Turn:
    reply: str
    decisions: list[Decision]
    model_calls: int


@dataclass
class Env:
    gateway: InferenceService
    conn: EventConnection
    recorder: Recorder
    identity: Signer
    replicas: list[PolicyService]
    start_replica: Callable[[], Any]
    nats_url: str
    keys: Path

    async def ask(self, grant: SignedGrant, tool: str, args: dict[str, Any]) -> ToolCallRequested:
        inner = grant.grant
        request = ToolCallRequested(tenant="acme", grant=grant, workspace=inner.workspace, session_id=inner.session_id,
                                    tool=tool, args=args, digest=call_digest(
                                        tenant="acme", workspace=inner.workspace, session=inner.session_id,
                                        tool=tool, args=args))
        await self.conn.publish(subjects.tool_requested("acme"), request)
        return request

    def grant(self, *, user: str = "alice", roles: tuple[str, ...] = ("member",), workspace: str = "default",
              started_s_ago: float = 0.0, channel: str = "cli") -> SignedGrant:
        now = utcnow()
        return SignedGrant.issue(self.identity, SessionGrant(
            tenant="acme", workspace=workspace, user=user, roles=roles, channel=channel, session_id=f"s-{user}",
            issued_at=now - timedelta(seconds=started_s_ago), expires_at=now + timedelta(seconds=300)))

    async def turn(self, grant: SignedGrant, text: str, *, outcome: Callable[[str], str] = lambda tool: "ok",
                   pause_s: float = 0.0) -> Turn:
        """One turn as the planner runs it: model call, then each tool call asked on the bus, until a reply."""
        inner = grant.grant
        messages: list[dict[str, Any]] = [{"role": "user", "content": text}]
        decisions: list[Decision] = []
        async with httpx.AsyncClient(timeout=15) as client:
            for model_calls in range(1, 40):
                response = await client.post(f"{self.gateway.url}/chat/completions",
                                             headers={"authorization": f"Bearer {grant.as_api_key()}"},
                                             json={"model": "any", "messages": messages})
                message = response.json()["choices"][0]["message"]
                if not message.get("tool_calls"):
                    return Turn(message["content"], decisions, model_calls)
                messages.append(message)
                for tool_call in message["tool_calls"]:
                    tool, args = tool_call["function"]["name"], json.loads(tool_call["function"]["arguments"])
                    request = ToolCallRequested(
                        tenant="acme", grant=grant, workspace=inner.workspace, session_id=inner.session_id,
                        tool=tool, args=args, digest=call_digest(tenant="acme", workspace=inner.workspace,
                                                                 session=inner.session_id, tool=tool, args=args))
                    await self.conn.publish(subjects.tool_requested("acme"), request)
                    decision = await self.recorder.decision(request.call_id)
                    decisions.append(decision)
                    status = outcome(tool) if decision.verdict == "allow" else "denied"
                    text = "done" if status == "ok" else (decision.reason if status == "denied" else "no such file")
                    await self.conn.publish(subjects.tool_completed("acme", inner.workspace), ToolCallCompleted.of(
                        request, status, result=text if status == "ok" else "", reason="" if status == "ok" else text))
                    messages.append({"role": "tool", "tool_call_id": tool_call["id"], "content": text})
                    await asyncio.sleep(pause_s)
        raise AssertionError("the turn never ended")


@pytest.fixture(scope="module")
async def env(nats_server: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    base = tmp_path_factory.mktemp("guardrails")
    keys = base / "keys"
    identity = ensure_signer(keys, "identity")
    (base / "scenarios.yaml").write_text(yaml.safe_dump(SCENARIOS))
    model = start_scripted_model(free_port(), base / "scenarios.yaml", base / "scripted-model.log")
    slow = HttpServer(Starlette(routes=[Route("/v1/chat/completions", slow_model, methods=["POST"])]), "127.0.0.1",
                      free_port(), what="slow model", port_setting="-")
    await slow.start()
    replicas: list[PolicyService] = []

    async def start_replica() -> PolicyService:
        state = base / f"policy-{len(replicas)}"
        state.mkdir()
        (state / "policy.yaml").write_text(PACK)
        replica = build_policy(PolicySettings(
            nats_url=nats_server.url, state_dir=state, keys_dir=keys, packs_bucket="guardrails_test_packs",
            limits_bucket="guardrails_test_limits", turns_bucket="guardrails_test_turns",
            usage_consumer="guardrails-test-usage"))
        await replica.start()
        replicas.append(replica)
        return replica

    for _ in range(2):  # two replicas share the turn records: each call goes to either one
        await start_replica()
    gateway = build(InferenceSettings(nats_url=nats_server.url, state_dir=base / "inference", keys_dir=keys,
                                      inference_port=free_port(),
                                      inference_upstreams={
                                          "scripted": Upstream(base_url=model.urls["model"]),
                                          "slow": Upstream(base_url=f"http://127.0.0.1:{slow.port}/v1")},
                                      inference_decision_timeout_s=5.0))
    await gateway.start()
    conn = await EventConnection.connect(BusSettings(nats_url=nats_server.url), "guardrails-tests")
    recorder = Recorder()
    await conn.subscribe("cad.v1.tool.decided.acme", recorder.on_event)
    await conn.subscribe(subjects.turn_stopped("acme"), recorder.on_event)
    await conn.nc.flush()
    yield Env(gateway, conn, recorder, identity, replicas, start_replica, nats_server.url, keys)
    await conn.close()
    await gateway.stop()
    for replica in replicas:
        if replica.connection is not None:
            await replica.stop()
    SLOW_UNTIL_TEARDOWN.set()
    await slow.stop()
    model.stop()


def stops_of(env: Env, grant: SignedGrant) -> list[TurnStopped]:
    return [s for s in env.recorder.stopped if s.turn_id == grant.grant.grant_id]


async def until_stopped(env: Env, grant: SignedGrant) -> list[TurnStopped]:
    for _ in range(100):
        if stops_of(env, grant):
            break
        await asyncio.sleep(0.05)
    return stops_of(env, grant)


async def test_the_call_past_the_limit_is_denied_and_the_person_reads_why(env: Env) -> None:
    grant = env.grant()
    turn = await env.turn(grant, "count to ten")
    assert turn.reply == ("this turn was stopped: 4 tool calls is the limit per turn for acme. Send a new message "
                          "to go on.")
    assert [d.verdict for d in turn.decisions] == ["allow"] * 4 + ["deny"]
    assert turn.decisions[-1].policy_ids == ("guardrail:acme-turns:tool_calls",)
    # the model was asked once more after the stop, and refused: that refusal is the reply, nothing else ran
    assert turn.model_calls == 6
    stopped = await until_stopped(env, grant)
    assert [(s.limit, s.guardrail, s.user, s.tool_calls, s.tool) for s in stopped] == [
        ("tool_calls", "acme-turns", "alice", 4, "terminal")]


async def test_a_new_message_is_a_new_turn_with_its_own_count(env: Env) -> None:
    turn = await env.turn(env.grant(user="bob"), "count to ten")
    assert turn.decisions[-1].verdict == "deny"
    fresh = await env.turn(env.grant(user="bob"), "say hello")
    assert fresh.reply == "hello there, this is a short answer"


async def test_the_limit_for_a_role_is_the_roles(env: Env) -> None:
    turn = await env.turn(env.grant(user="ada", roles=("admin",)), "count to ten")
    assert [d.verdict for d in turn.decisions] == ["allow"] * 6 + ["deny"]
    assert "6 tool calls is the limit per turn for role admin in acme" in turn.reply


async def test_the_same_call_again_and_again_is_stopped_as_a_loop(env: Env) -> None:
    grant = env.grant(user="carol")
    turn = await env.turn(grant, "are we there yet")
    assert [d.verdict for d in turn.decisions] == ["allow"] * 3 + ["deny"]
    assert turn.decisions[-1].policy_ids == ("guardrail:acme-turns:same_call",)
    assert "looping without progress: it asked for the same terminal call 4 times" in turn.reply
    assert [s.limit for s in await until_stopped(env, grant)] == ["same_call"]


async def test_the_same_failing_call_is_stopped_after_it_failed_twice(env: Env) -> None:
    grant = env.grant(user="dave")
    turn = await env.turn(grant, "read the missing file", outcome=lambda tool: "error")
    assert [d.verdict for d in turn.decisions] == ["allow", "allow", "deny"]
    assert turn.decisions[-1].policy_ids == ("guardrail:acme-turns:same_failing_call",)
    assert "the same read_file call failed 2 times" in turn.reply


async def test_failures_can_be_added_but_never_taken_back_or_charged_to_another_tenant(env: Env) -> None:
    grant = env.grant(user="lou")
    args = {"path": "missing.txt"}
    for _ in range(2):
        request = await env.ask(grant, "read_file", args)
        assert (await env.recorder.decision(request.call_id)).verdict == "allow"
        await env.conn.publish(subjects.tool_completed("acme", "default"),
                               ToolCallCompleted.of(request, "error", reason="no such file"))
        # a planner answering for its own call afterwards ("it went fine") does not undo the failure
        await env.conn.publish(subjects.tool_completed("acme", "default"), ToolCallCompleted.of(request, "ok"))
        # nor does anyone else's tenant count: the same call id failing in globex is globex's affair
        await env.conn.publish(subjects.tool_completed("globex", "default"), ToolCallCompleted(
            tenant="globex", call_id=request.call_id, workspace="default", session_id="s-lou", tool="read_file",
            status="error"))
        await asyncio.sleep(0.3)  # the outcome reaches policy before the planner's next model call would
    third = await env.recorder.decision((await env.ask(grant, "read_file", args)).call_id)
    assert third.policy_ids == ("guardrail:acme-turns:same_failing_call",)
    # a globex failure of a call nobody in acme failed changes nothing for acme
    other = env.grant(user="max")
    request = await env.ask(other, "read_file", args)
    await env.recorder.decision(request.call_id)
    for _ in range(3):
        await env.conn.publish(subjects.tool_completed("globex", "default"), ToolCallCompleted(
            tenant="globex", call_id=request.call_id, workspace="default", session_id="s-max", tool="read_file",
            status="error"))
    await asyncio.sleep(0.3)
    assert (await env.recorder.decision((await env.ask(other, "read_file", args)).call_id)).verdict == "allow"


async def test_the_wall_time_limit_stops_a_slow_turn(env: Env) -> None:
    # research turns may run 2 s; each tool call here takes a second
    turn = await env.turn(env.grant(user="erin", workspace="research"), "count to ten", pause_s=1.1)
    # the model call after the second slow call is past the limit: it is refused, and that is the reply
    assert len(turn.decisions) <= 2 and all(d.verdict == "allow" for d in turn.decisions)
    assert turn.reply.startswith("this turn was stopped: 2s is the limit per turn for workspace research in acme")
    # the same person's turn in another workspace has an hour
    other = await env.turn(env.grant(user="erin", started_s_ago=5), "say hello")
    assert other.reply == "hello there, this is a short answer"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_model_call_still_answering_when_the_turn_runs_out_is_cut_with_the_reason(env: Env,
                                                                                          stream: bool) -> None:
    grant = env.grant(user="hal", workspace="lab")
    started = asyncio.get_running_loop().time()
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(f"{env.gateway.url}/chat/completions",
                                     headers={"authorization": f"Bearer {grant.as_api_key()}"},
                                     json={"model": "any", "stream": stream,
                                           "messages": [{"role": "user", "content": "think hard"}]})
    took = asyncio.get_running_loop().time() - started
    stop = ("this turn was stopped: 2s is the limit per turn for workspace lab in acme, and it ran out while the "
            "model was answering. Send a new message to go on.")
    if stream:
        text = "".join(choice["delta"].get("content") or "" for line in response.text.splitlines()
                       if line.startswith("data: {") for choice in json.loads(line[6:])["choices"])
        assert text == f"Thinking\n[{stop}]"  # what came before the limit, then why the rest never will
    else:
        assert response.json()["choices"][0]["message"]["content"] == stop
    assert took < 10  # cut at the turn's limit, not the upstream's minute


async def test_the_model_call_past_the_limit_is_refused_with_the_reason(env: Env) -> None:
    turn = await env.turn(env.grant(user="ned", roles=("chatty", "member")), "count to ten")
    assert turn.reply == ("this turn was stopped: 2 model calls is the limit per turn for role chatty in acme. "
                          "Send a new message to go on.")
    assert [d.verdict for d in turn.decisions] == ["allow", "allow"] and turn.model_calls == 3


async def test_tokens_per_turn_count_the_models_real_usage(env: Env) -> None:
    turn = await env.turn(env.grant(user="fay", roles=("frugal", "member")), "count to ten")
    assert "40 tokens is the limit per turn for role frugal in acme" in turn.reply
    assert 1 <= len(turn.decisions) < 4


async def test_calls_of_one_turn_asked_at_once_across_replicas_get_exactly_the_limit(env: Env) -> None:
    # a model may ask several tool calls in one message; the replicas race on the turn's record
    grant = env.grant(user="ivy")
    requests = await asyncio.gather(*(env.ask(grant, "terminal", {"command": f"echo {i}"}) for i in range(12)))
    decisions = await asyncio.gather(*(env.recorder.decision(r.call_id, timeout=10) for r in requests))
    assert sorted(d.verdict for d in decisions) == ["allow"] * 4 + ["deny"] * 8
    assert len(await until_stopped(env, grant)) == 1  # stopped once, by whichever replica got there first


async def test_a_replica_gone_mid_turn_and_a_new_one_lose_no_count(env: Env) -> None:
    grant = env.grant(user="jay")
    for i in range(3):
        assert (await env.recorder.decision((await env.ask(grant, "terminal", {"command": f"echo {i}"})).call_id)
                ).verdict == "allow"
    await env.replicas[0].stop()  # the other replica, and a new one, carry on from the shared record
    await env.start_replica()
    verdicts = [(await env.recorder.decision((await env.ask(grant, "terminal", {"command": f"echo {i}"})).call_id,
                                             timeout=10)).verdict for i in range(3, 6)]
    assert verdicts == ["allow", "deny", "deny"]


async def test_an_outside_mcp_clients_calls_are_not_a_turn(env: Env) -> None:
    # the MCP endpoint's grants (channel mcp) serve another agent's loop for minutes: only rate limits apply
    grant = env.grant(user="kim", channel="mcp")
    verdicts = [(await env.recorder.decision((await env.ask(grant, "terminal", {"command": "ls"})).call_id)).verdict
                for _ in range(6)]
    assert verdicts == ["allow"] * 6


async def test_a_policy_replica_killed_mid_turn_loses_no_count(env: Env, tmp_path: Path) -> None:
    # the turn's first calls are decided by a replica in a process of its own, alone; it is then SIGKILLed
    (tmp_path / "policy.yaml").write_text(PACK)
    process = subprocess.Popen(
        [sys.executable, "-m", "caduceus_policy"], stdout=(tmp_path / "policy.log").open("wb"),
        stderr=subprocess.STDOUT, env={
            **os.environ, "CADUCEUS_NATS_URL": env.nats_url, "CADUCEUS_STATE_DIR": str(tmp_path),
            "CADUCEUS_KEYS_DIR": str(env.keys), "CADUCEUS_PACKS_BUCKET": "guardrails_test_packs",
            "CADUCEUS_LIMITS_BUCKET": "guardrails_test_limits", "CADUCEUS_TURNS_BUCKET": "guardrails_test_turns",
            "CADUCEUS_USAGE_CONSUMER": "guardrails-test-usage"})
    try:
        for replica in env.replicas:
            if replica.connection is not None:
                await replica.stop()
        probe = env.grant(user="probe")
        for attempt in range(60):  # until the process decides
            try:
                request = await env.ask(probe, "terminal", {"command": f"echo {attempt}"})
                await env.recorder.decision(request.call_id, timeout=1)
                break
            except TimeoutError:
                continue
        grant = env.grant(user="nia")
        for i in range(3):
            decided = await env.recorder.decision((await env.ask(grant, "terminal", {"command": f"echo {i}"})).call_id)
            assert decided.verdict == "allow"
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
        await env.start_replica()  # a fresh replica, nothing in its memory, carries on from the shared record
    verdicts = [(await env.recorder.decision((await env.ask(grant, "terminal", {"command": f"echo {i}"})).call_id,
                                             timeout=10)).verdict for i in range(3, 6)]
    assert verdicts == ["allow", "deny", "deny"]


async def test_guardrails_that_cannot_be_read_deny_the_call(env: Env, nats_server: Any) -> None:
    # last in this module: the turn records' bucket goes away under both replicas
    await env.conn.js.delete_key_value("guardrails_test_turns")
    try:
        turn = await env.turn(env.grant(user="gus"), "count to ten")
        assert "turn guardrails cannot be checked" in turn.reply and "fail closed" in turn.reply
        assert turn.decisions == []  # the very first model call was refused
    finally:
        from caduceus_bus import open_bucket
        await open_bucket(env.conn.js, "guardrails_test_turns", max_age_s=86400)

