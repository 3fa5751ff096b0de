"""SIGTERM while the inference gateway streams an answer: the stream in progress finishes whole (policy's decision
already came, its usage is still published), no new call is taken, and the process exits 0. The gateway runs as
`python -m caduceus_inference`, the way `caduceus up`, compose and Kubernetes run it; policy is the real service."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from caduceus_bus import BusSettings, EventConnection
from caduceus_contracts import ModelCallCompleted, SessionGrant, SignedGrant, ensure_signer, parse_event, utcnow
from caduceus_embedded.ports import free_port
from caduceus_policy import PolicySettings
from caduceus_policy.app import build as build_policy
from caduceus_web import HttpServer

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]
PACK = ('version: "inference-sigterm.1"\ntenants:\n  acme:\n    rules:\n'
        '      - {id: members-use-terminal, effect: allow, roles: [member], tools: [terminal]}\n'
        '    models:\n      default: slow\n')
WORDS = [f"word{n} " for n in range(20)]


async def slow_stream(request: Request) -> StreamingResponse:
    """An OpenAI-compatible upstream that takes 4 s to stream its answer."""
    body = json.loads(await request.body())

    async def events() -> AsyncIterator[bytes]:
        for word in WORDS:
            chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
            yield f"data: {json.dumps(chunk)}\n\n".encode()
            await asyncio.sleep(0.2)
        usage = {"prompt_tokens": 9, "completion_tokens": len(WORDS), "total_tokens": 9 + len(WORDS)}
        yield f"data: {json.dumps({'id': 'c1', 'choices': [], 'usage': usage})}\n\n".encode()
        yield b"data: [DONE]\n\n"
    return StreamingResponse(events(), media_type="text/event-stream")


async def test_a_stream_in_progress_at_sigterm_finishes_and_nothing_new_is_taken(tmp_path: Path,
                                                                                 fresh_nats: Any) -> None:
    keys = tmp_path / "keys"
    identity = ensure_signer(keys, "identity")
    (tmp_path / "policy.yaml").write_text(PACK)
    policy = build_policy(PolicySettings(nats_url=fresh_nats.url, state_dir=tmp_path, keys_dir=keys,
                                         packs_from_bus=False))
    upstream = HttpServer(Starlette(routes=[Route("/v1/chat/completions", slow_stream, methods=["POST"])]),
                          "127.0.0.1", free_port(), what="slow upstream", port_setting="-")
    await upstream.start()
    await policy.start()
    conn = await EventConnection.connect(BusSettings(nats_url=fresh_nats.url), "inference-sigterm")
    completed: list[ModelCallCompleted] = []

    async def on_model(msg: Any) -> None:
        event = parse_event(msg.data, subject=msg.subject)
        if isinstance(event, ModelCallCompleted):
            completed.append(event)

    await conn.subscribe("cad.v1.model.>", on_model)
    port = free_port()
    env = {**os.environ, "CADUCEUS_STATE_DIR": str(tmp_path / "inference"), "CADUCEUS_KEYS_DIR": str(keys),
           "CADUCEUS_NATS_URL": fresh_nats.url, "CADUCEUS_INFERENCE_PORT": str(port),
           "CADUCEUS_INFERENCE_UPSTREAMS": json.dumps({"slow": {"base_url": f"http://127.0.0.1:{upstream.port}/v1"}})}
    process = subprocess.Popen([sys.executable, "-m", "caduceus_inference"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    try:
        now = utcnow()
        key = SignedGrant.issue(identity, SessionGrant(
            tenant="acme", workspace="default", user="alice", roles=("member",), channel="cli", session_id="s-term",
            issued_at=now - timedelta(seconds=5), expires_at=now + timedelta(minutes=5))).as_api_key()
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        request = {"model": "any", "stream": True, "messages": [{"role": "user", "content": "take your time"}]}
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(300):  # the gateway is up when its port answers
                try:
                    await client.get(f"http://127.0.0.1:{port}/v1/models", headers={"authorization": f"Bearer {key}"})
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.1)
            text, done = "", False
            async with client.stream("POST", url, json=request, headers={"authorization": f"Bearer {key}"}) as reply:
                lines = reply.aiter_lines()
                async for line in lines:
                    if line.startswith("data: {"):
                        text += "".join(c["delta"].get("content") or "" for c in json.loads(line[6:])["choices"])
                    if "word2 " in text:
                        break
                process.send_signal(signal.SIGTERM)  # mid-stream: 17 words still to come
                await asyncio.sleep(0.5)
                with pytest.raises(httpx.ConnectError):  # stopping: a new call is not taken
                    await client.post(url, json=request, headers={"authorization": f"Bearer {key}"})
                async for line in lines:
                    if line.startswith("data: {"):
                        text += "".join(c["delta"].get("content") or "" for c in json.loads(line[6:])["choices"])
                    done = done or line == "data: [DONE]"
        assert text == "".join(WORDS) and done  # the whole answer, then the end of the stream
        output = process.communicate(timeout=30)[0].decode()
        assert process.returncode == 0, output
        for _ in range(50):  # its usage and outcome were published before the process let go of the bus
            if completed:
                break
            await asyncio.sleep(0.1)
        assert [c.status for c in completed] == ["ok"]
    finally:
        if process.poll() is None:
            process.kill()
        await conn.close()
        await policy.stop()
        await upstream.stop()
