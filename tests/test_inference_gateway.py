"""The inference gateway on the real bus with the real policy service, in front of two real HTTP upstreams:
the scripted model (standing in for a self-hosted model) and a local OpenAI-compatible server standing in for
an outside provider (it records what reached it, so a test sees exactly what left Caduceus)."""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from caduceus_bus import BusSettings, EventConnection
from caduceus_contracts import (
    ModelCallCompleted,
    ModelCallDecided,
    ModelUsage,
    SessionGrant,
    SignedGrant,
    Signer,
    ensure_signer,
    parse_event,
    subjects,
    utcnow,
)
from caduceus_embedded.ports import free_port
from caduceus_inference import REFUSED_HEADER, InferenceService, InferenceSettings, Upstream, build
from caduceus_policy.app import PolicyService
from caduceus_policy.app import build as build_policy
from caduceus_policy.settings import PolicySettings
from caduceus_web import HttpServer

PACK = textwrap.dedent("""\
    version: "inference-test.1"
    tenants:
      acme:
        rules:
          - {id: members-use-terminal, effect: allow, roles: [member], tools: [terminal]}
        classifiers:
          classified: {words: [top secret]}
          customer_data: {patterns: ['CUST-[0-9]{6}']}
        limits:
          - {id: tokens-per-person, max_tokens: 400, window: 1h, per: user}
        models:
          default: outside
          routes:
            - {id: classified-stays-home, upstream: self-hosted, data_classes: [classified]}
            - {id: interns-go-small, upstream: outside-small, roles: [intern]}
          prompt_rules: {secret: redact, customer_data: deny}
          response_rules: {secret: redact, customer_data: deny}
    """)
OUTSIDE_USAGE = {"prompt_tokens": 37, "completion_tokens": 5, "total_tokens": 42}


@dataclass
class OutsideProvider:
    """A local OpenAI-compatible server: records each request; answers with fixed text and usage."""

    answer: str = "the outside model answers"
    requests: list[dict[str, Any]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    down: bool = False

    async def chat(self, request: Request) -> Response:
        body = json.loads(await request.body())
        self.requests.append(body)
        self.keys.append(request.headers.get("authorization", ""))
        if self.down:
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
        if not body.get("stream"):
            return JSONResponse({"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": self.answer}}],
                                 "usage": OUTSIDE_USAGE})

        async def events() -> AsyncIterator[bytes]:
            # A few characters a chunk, as real providers stream tokens: a secret never arrives in one piece.
            pieces = [self.answer[i:i + 3] for i in range(0, len(self.answer), 3)]
            for n, piece in enumerate(pieces):
                chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "delta": {"content": piece},
                                      "finish_reason": "stop" if n == len(pieces) - 1 else None}]}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            if (body.get("stream_options") or {}).get("include_usage"):
                yield f"data: {json.dumps({'id': 'c1', 'choices': [], 'usage': OUTSIDE_USAGE})}\n\n".encode()
            yield b"data: [DONE]\n\n"
        return StreamingResponse(events(), media_type="text/event-stream")

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])


@dataclass
class Bus:
    conn: EventConnection
    events: list[Any] = field(default_factory=list)

    async def on_event(self, msg: Any) -> None:
        self.events.append(parse_event(msg.data, subject=msg.subject))

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    async def until(self, kind: type, call_id: str, timeout: float = 5.0) -> Any:
        for _ in range(int(timeout / 0.02)):
            found = [e for e in self.of(kind) if getattr(e, "call_id", None) == call_id]
            if found:
                return found[-1]
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {kind.__name__} for call {call_id}")


@pytest.fixture(scope="module")
async def outside() -> AsyncIterator[tuple[OutsideProvider, str]]:
    provider = OutsideProvider()
    server = HttpServer(provider.app(), "127.0.0.1", free_port(), what="outside provider", port_setting="-")
    await server.start()
    yield provider, f"http://127.0.0.1:{server.port}/v1"
    await server.stop()


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("inference-keys")


@pytest.fixture(scope="module")
def identity(keys_dir: Path) -> Signer:
    return ensure_signer(keys_dir, "identity")


@pytest.fixture(scope="module")
async def policy(nats_server: Any, keys_dir: Path, identity: Signer,
                 tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PolicyService]:
    state = tmp_path_factory.mktemp("inference-policy")
    (state / "policy.yaml").write_text(PACK)
    service = build_policy(PolicySettings(nats_url=nats_server.url, state_dir=state, keys_dir=keys_dir,
                                          packs_bucket="inference_test_packs", limits_bucket="inference_test_limits",
                                          usage_consumer="inference-test-usage"))
    await service.start()
    yield service
    await service.stop()


@pytest.fixture(scope="module")
async def gateway(nats_server: Any, keys_dir: Path, policy: PolicyService, scripted_model: Any,
                  outside: tuple[OutsideProvider, str],
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InferenceService]:
    _, outside_url = outside
    upstreams = {"outside": Upstream(base_url=outside_url, api_key="sk-outside-provider-key", model="big-1"),
                 "outside-small": Upstream(base_url=outside_url, api_key="sk-outside-provider-key", model="small-1"),
                 "self-hosted": Upstream(base_url=scripted_model.base_url)}
    service = build(InferenceSettings(nats_url=nats_server.url, state_dir=tmp_path_factory.mktemp("inference"),
                                      keys_dir=keys_dir, inference_port=free_port(), inference_upstreams=upstreams,
                                      inference_decision_timeout_s=3.0))
    await service.start()
    yield service
    await service.stop()


@pytest.fixture(scope="module")
async def bus(nats_server: Any, gateway: InferenceService) -> AsyncIterator[Bus]:
    conn = await EventConnection.connect(BusSettings(nats_url=nats_server.url), "inference-tests")
    recorder = Bus(conn)
    await conn.subscribe(f"{subjects.PREFIX}.model.>", recorder.on_event)
    await conn.nc.flush()
    yield recorder
    await conn.close()


def grant(identity: Signer, *, user: str = "alice", roles: tuple[str, ...] = ("member",),
          ttl_s: float = 300.0) -> SignedGrant:
    now = utcnow()
    return SignedGrant.issue(identity, SessionGrant(
        tenant="acme", workspace="default", user=user, roles=roles, channel="cli", session_id=f"s-{user}",
        issued_at=now - timedelta(seconds=5), expires_at=now + timedelta(seconds=ttl_s)))


async def call(service: InferenceService, key: str, text: str, *, stream: bool = False) -> httpx.Response:
    async with httpx.AsyncClient(timeout=15) as client:
        return await client.post(f"{service.url}/chat/completions", headers={"authorization": f"Bearer {key}"},
                                 json={"model": "whatever", "stream": stream,
                                       "messages": [{"role": "user", "content": text}]})


def streamed_text(response: httpx.Response) -> str:
    text = ""
    for line in response.text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            for choice in json.loads(line[6:]).get("choices", []):
                text += choice.get("delta", {}).get("content") or ""
    return text


def answer(response: httpx.Response) -> str:
    return response.json()["choices"][0]["message"]["content"]


async def test_a_call_goes_to_the_default_upstream_with_its_key_and_usage_is_the_upstreams_count(
        gateway: InferenceService, bus: Bus, identity: Signer, outside: tuple[OutsideProvider, str]) -> None:
    provider, _ = outside
    response = await call(gateway, grant(identity, user="u-default").as_api_key(), "summarise the plan")
    assert response.status_code == 200 and REFUSED_HEADER not in response.headers
    assert answer(response) == provider.answer
    assert provider.requests[-1]["model"] == "big-1"
    # the provider's credential is the gateway's, never the planner's grant
    assert provider.keys[-1] == "Bearer sk-outside-provider-key"
    decided = bus.of(ModelCallDecided)[-1]
    usage = await bus.until(ModelUsage, decided.call_id)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.upstream, usage.user) == (37, 5, "outside",
                                                                                          "u-default")
    completed = await bus.until(ModelCallCompleted, decided.call_id)
    assert completed.status == "ok"
    assert decided.decision.decision.policy_ids == ("model-route:default",)


async def test_streaming_passes_through_chunk_by_chunk_and_records_the_real_usage(
        gateway: InferenceService, bus: Bus, identity: Signer, outside: tuple[OutsideProvider, str]) -> None:
    provider, _ = outside
    response = await call(gateway, grant(identity, user="u-stream").as_api_key(), "stream it", stream=True)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert streamed_text(response).strip() == provider.answer
    assert response.text.rstrip().endswith("data: [DONE]")
    assert provider.requests[-1]["stream_options"] == {"include_usage": True}
    usage = [u for u in bus.of(ModelUsage) if u.user == "u-stream"]
    for _ in range(100):
        if usage:
            break
        await asyncio.sleep(0.02)
        usage = [u for u in bus.of(ModelUsage) if u.user == "u-stream"]
    assert (usage[-1].prompt_tokens, usage[-1].completion_tokens) == (37, 5)


async def test_classified_content_goes_only_to_the_self_hosted_model(
        gateway: InferenceService, bus: Bus, identity: Signer, outside: tuple[OutsideProvider, str]) -> None:
    provider, _ = outside
    before = len(provider.requests)
    response = await call(gateway, grant(identity).as_api_key(), "hello, this report is TOP SECRET: ...")
    assert answer(response).startswith("Hello! I am the scripted model")
    assert len(provider.requests) == before  # nothing reached the outside provider
    decision = bus.of(ModelCallDecided)[-1].decision.decision
    assert (decision.upstream, decision.data_classes) == ("self-hosted", ("classified",))
    assert decision.policy_ids == ("model-route:classified-stays-home",)


async def test_a_role_route_picks_another_upstream(gateway: InferenceService, identity: Signer,
                                                   outside: tuple[OutsideProvider, str]) -> None:
    provider, _ = outside
    await call(gateway, grant(identity, user="ian", roles=("intern",)).as_api_key(), "draft an email")
    assert provider.requests[-1]["model"] == "small-1"


async def test_a_secret_in_the_prompt_is_redacted_before_it_leaves(
        gateway: InferenceService, identity: Signer, outside: tuple[OutsideProvider, str]) -> None:
    provider, _ = outside
    secret = "AKIAIOSFODNN7EXAMPLE"
    response = await call(gateway, grant(identity).as_api_key(), f"why does key {secret} fail?")
    assert response.status_code == 200
    sent = json.dumps(provider.requests[-1])
    assert secret not in sent and "[REDACTED:aws_access_key]" in sent


async def test_a_denied_data_class_refuses_the_call_with_a_reply_saying_why(
        gateway: InferenceService, identity: Signer, outside: tuple[OutsideProvider, str]) -> None:
    provider, _ = outside
    before = len(provider.requests)
    response = await call(gateway, grant(identity).as_api_key(), "look up customer CUST-123456 for me")
    assert response.headers[REFUSED_HEADER] == "1"
    assert "customer_data" in answer(response) and "refused" in answer(response)
    assert len(provider.requests) == before


async def test_a_secret_in_the_response_is_redacted(gateway: InferenceService, identity: Signer,
                                                    outside: tuple[OutsideProvider, str]) -> None:
    provider, _ = outside
    provider.answer = "use ghp_" + "a" * 36 + " as the token"
    try:
        plain = answer(await call(gateway, grant(identity).as_api_key(), "what token?"))
        streamed = streamed_text(await call(gateway, grant(identity).as_api_key(), "what token?", stream=True))
    finally:
        provider.answer = "the outside model answers"
    for text in (plain, streamed):
        assert "ghp_" not in text and "[REDACTED:github_token]" in text


async def test_a_denied_class_in_a_streamed_answer_withholds_the_rest_whatever_its_chunking(
        gateway: InferenceService, bus: Bus, identity: Signer, outside: tuple[OutsideProvider, str]) -> None:
    provider, _ = outside
    provider.answer = "the account you want is CUST-123456, opened in 2019"
    try:
        streamed = streamed_text(await call(gateway, grant(identity, user="u-held").as_api_key(), "which?",
                                            stream=True))
    finally:
        provider.answer = "the outside model answers"
    assert "CUST" not in streamed and "123456" not in streamed
    assert "withheld the rest of the answer: it held customer_data data" in streamed
    for _ in range(50):
        completed = [c for c in bus.of(ModelCallCompleted) if c.user == "u-held"]
        if completed:
            break
        await asyncio.sleep(0.1)
    assert completed[0].status == "refused" and "customer_data" in completed[0].detail


async def test_an_exhausted_token_budget_refuses_before_the_call_and_says_what_is_left(
        gateway: InferenceService, bus: Bus, identity: Signer, outside: tuple[OutsideProvider, str]) -> None:
    provider, _ = outside
    key = grant(identity, user="spender").as_api_key()
    # 42 real tokens a call against 400 per hour: ten calls spend it (usage is counted from the upstream's numbers)
    for _ in range(10):
        assert REFUSED_HEADER not in (await call(gateway, key, "spend")).headers
    for _ in range(100):
        used = sum(u.prompt_tokens + u.completion_tokens for u in bus.of(ModelUsage) if u.user == "spender")
        if used >= 420:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # policy counts usage from the stream
    before = len(provider.requests)
    refused = await call(gateway, key, "one more")
    assert refused.headers[REFUSED_HEADER] == "1"
    text = answer(refused)
    assert "over budget (tokens-per-person)" in text and "0 tokens of 400 tokens per user per 1h left (0%)" in text
    assert len(provider.requests) == before
    # another person's budget is their own
    assert REFUSED_HEADER not in (await call(gateway, grant(identity, user="saver").as_api_key(), "hi")).headers


@pytest.mark.parametrize("key", [
    "sk-not-a-grant",
    "cadgrant_bm90IGpzb24",
])
async def test_a_key_that_is_not_a_grant_is_refused_with_401(gateway: InferenceService, key: str) -> None:
    response = await call(gateway, key, "hello")
    assert response.status_code == 401
    assert "session grant" in response.json()["error"]["message"]


async def test_a_forged_or_expired_grant_is_refused(gateway: InferenceService, identity: Signer) -> None:
    forged = grant(Signer.generate("identity")).as_api_key()
    assert (await call(gateway, forged, "hello")).status_code == 401
    expired = grant(identity, ttl_s=-1).as_api_key()
    assert (await call(gateway, expired, "hello")).status_code == 401


async def test_an_upstream_that_fails_refuses_the_call_and_says_so(
        gateway: InferenceService, bus: Bus, identity: Signer, outside: tuple[OutsideProvider, str]) -> None:
    provider, _ = outside
    provider.down = True
    try:
        response = await call(gateway, grant(identity).as_api_key(), "anyone there?")
    finally:
        provider.down = False
    assert response.headers[REFUSED_HEADER] == "1"
    assert "could not complete this model call" in answer(response) and "503" in answer(response)
    completed = await bus.until(ModelCallCompleted, bus.of(ModelCallDecided)[-1].call_id)
    assert completed.status == "upstream-failed"


async def test_policy_down_refuses_the_call_fail_closed(
        gateway: InferenceService, policy: PolicyService, identity: Signer,
        outside: tuple[OutsideProvider, str]) -> None:
    provider, _ = outside
    before = len(provider.requests)
    await policy.stop()
    try:
        response = await call(gateway, grant(identity).as_api_key(), "hello while policy is away")
    finally:
        await policy.start()
    assert response.headers[REFUSED_HEADER] == "1"
    assert "policy did not decide" in answer(response) and "fail closed" in answer(response)
    assert len(provider.requests) == before
