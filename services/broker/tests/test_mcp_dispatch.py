"""An allowed MCP call when no MCP gateway runs: the broker answers it with an error at once (its dispatch would go
to nobody, and the agent would wait out its tool timeout); with a gateway listening, the call is dispatched."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import nats
import pytest

from caduceus_contracts import (
    Decision,
    SessionGrant,
    SignedDecision,
    SignedGrant,
    ToolCallCompleted,
    ToolCallDecided,
    ToolCallDispatched,
    ToolCallRequested,
    call_digest,
    ensure_signer,
    parse_event,
    subjects,
    utcnow,
)

pytestmark = pytest.mark.timeout(90)
TENANT, WORKSPACE, SESSION, TOOL = "acme", "default", "s-mcp", "mcp__files__echo"


def allowed_call(identity: Any, policy: Any, text: str) -> tuple[ToolCallRequested, ToolCallDecided]:
    now = utcnow()
    grant = SignedGrant.issue(identity, SessionGrant(
        tenant=TENANT, workspace=WORKSPACE, user="alice", roles=("member",), channel="cli", session_id=SESSION,
        issued_at=now, expires_at=now + timedelta(minutes=5)))
    args = {"text": text}
    digest = call_digest(tenant=TENANT, workspace=WORKSPACE, session=SESSION, tool=TOOL, args=args)
    request = ToolCallRequested(tenant=TENANT, grant=grant, workspace=WORKSPACE, session_id=SESSION, tool=TOOL,
                                args=args, digest=digest)
    decision = SignedDecision.issue(policy, Decision(
        tenant=TENANT, workspace=WORKSPACE, session_id=SESSION, call_id=request.call_id, tool=TOOL, digest=digest,
        verdict="allow", reason="allowed", expires_at=utcnow() + timedelta(minutes=1)))
    return request, ToolCallDecided(tenant=TENANT, call_id=request.call_id, workspace=WORKSPACE, decision=decision)


async def test_an_mcp_call_with_no_gateway_running_is_an_error_at_once(tmp_path: Path, fresh_nats: Any) -> None:
    identity = ensure_signer(tmp_path / "keys", "identity")
    policy = ensure_signer(tmp_path / "keys", "policy")
    env = {**os.environ, "CADUCEUS_STATE_DIR": str(tmp_path), "CADUCEUS_NATS_URL": fresh_nats.url}
    process = subprocess.Popen([sys.executable, "-m", "caduceus_broker"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    nc = await nats.connect(fresh_nats.url)
    completed: dict[str, ToolCallCompleted] = {}
    dispatched: list[str] = []

    async def on_completed(msg: Any) -> None:
        event = parse_event(msg.data, expect=ToolCallCompleted)
        completed[event.call_id] = event

    async def on_dispatched(msg: Any) -> None:
        dispatched.append(parse_event(msg.data, expect=ToolCallDispatched).call_id)

    async def send(text: str) -> str:
        request, decided = allowed_call(identity, policy, text)
        await nc.publish(subjects.tool_requested(TENANT), request.model_dump_json().encode())
        await nc.publish(subjects.tool_decided(TENANT), decided.model_dump_json().encode())
        return request.call_id

    try:
        await nc.subscribe(subjects.tool_completed(TENANT, WORKSPACE), cb=on_completed)
        await nc.subscribe(subjects.mcp_dispatched(TENANT, WORKSPACE), cb=on_dispatched)
        for _ in range(150):
            try:
                if (await nc.request("caduceus.health.broker", b"", timeout=0.2)).data == b"ok":
                    break
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                await asyncio.sleep(0.1)

        lost = await send("nobody listens")
        async with asyncio.timeout(10):  # not the agent's 300 s tool timeout
            while lost not in completed:
                await asyncio.sleep(0.05)
        assert completed[lost].status == "error" and "no MCP gateway is running" in completed[lost].reason
        assert lost not in dispatched

        async def healthy(msg: Any) -> None:  # a gateway comes up: it answers the health request
            await msg.respond(b"ok")

        await nc.subscribe("caduceus.health.mcp", cb=healthy)
        await nc.flush()
        taken = await send("a gateway listens")
        async with asyncio.timeout(10):
            while taken not in dispatched:
                await asyncio.sleep(0.05)
        assert taken not in completed
    finally:
        process.terminate()
        process.wait(30)
        await nc.close()
