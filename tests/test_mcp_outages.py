"""Policy or gateway down (issue 14 item 6), with the real policy service, gateway and nats-server and a real MCP
server (SDK, stdio): no answer from policy lists no MCP tool; a call dispatched while the gateway is down never runs,
not even once the gateway is back; the gateway down makes policy deny (tests/test_mcp_gateway.py)."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from caduceus_bus import BusSettings, EventConnection
from caduceus_contracts import (
    Decision,
    McpFactsQuery,
    McpToolsAnswer,
    McpToolsQuery,
    SessionGrant,
    SignedDecision,
    SignedGrant,
    Signer,
    ToolCallCompleted,
    ToolCallDispatched,
    call_digest,
    parse_event,
    subjects,
    utcnow,
)
from caduceus_mcp import McpService, McpSettings
from caduceus_policy import PolicySettings
from caduceus_policy.app import build as build_policy

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(180)]
UPSTREAM = Path(__file__).resolve().parents[1] / "services" / "mcp" / "tests" / "upstreams.py"
PACK = 'version: "mcp-outages.1"\ntenants:\n  acme:\n    rules:\n' \
       '      - {id: mcp-for-members, effect: allow, roles: [member], tools: ["mcp__*"]}\n'


@pytest.fixture()
async def parts(tmp_path: Path, fresh_nats):
    keys = tmp_path / "keys"
    keys.mkdir()
    signers = {name: Signer.generate(name) for name in ("identity", "approval")}
    for name, signer in signers.items():
        (keys / f"{name}.pub").write_bytes(signer.public_pem())
    (tmp_path / "policy.yaml").write_text(PACK)
    policy = build_policy(PolicySettings(nats_url=fresh_nats.url, state_dir=tmp_path, keys_dir=keys,
                                         packs_from_bus=False))
    settings = McpSettings(nats_url=fresh_nats.url, state_dir=tmp_path, keys_dir=keys, list_timeout_s=20,
                           sandbox_stdio=False, policy_timeout_s=2)
    settings.registry_file.write_text("tenants:\n  acme:\n    servers:\n      files:\n"
                                      f"        command: [{sys.executable}, {UPSTREAM}, stdio]\n")
    mcp = McpService(settings)
    await policy.start()
    await mcp.start()
    conn = await EventConnection.connect(BusSettings(nats_url=fresh_nats.url), "mcp-outages")
    completed: list[ToolCallCompleted] = []

    async def on_completed(msg) -> None:
        event = parse_event(msg.data)
        if isinstance(event, ToolCallCompleted):
            completed.append(event)

    await conn.nc.subscribe(subjects.tool_completed("acme", "default"), cb=on_completed)
    yield {"policy": policy, "mcp": mcp, "settings": settings, "conn": conn, "signers": signers,
           "completed": completed}
    await conn.close()
    await mcp.stop()
    await policy.stop()


def grant(identity: Signer) -> SignedGrant:
    now = utcnow()
    return SignedGrant.issue(identity, SessionGrant(tenant="acme", workspace="default", user="alice",
                                                    roles=("member",), channel="cli", session_id="s-1",
                                                    issued_at=now, expires_at=now + timedelta(minutes=5)))


async def listed(conn: EventConnection, identity: Signer) -> set[str]:
    reply = await conn.nc.request(subjects.mcp_tools("acme", "default"),
                                  McpToolsQuery(grant=grant(identity)).model_dump_json().encode(), timeout=40)
    return {t.name for t in McpToolsAnswer.model_validate_json(reply.data).tools}


async def test_with_policy_down_a_planner_is_offered_no_mcp_tool(parts) -> None:
    assert "mcp__files__echo" in await listed(parts["conn"], parts["signers"]["identity"])
    await parts["policy"].stop()
    assert await listed(parts["conn"], parts["signers"]["identity"]) == set()


async def test_a_call_dispatched_while_the_gateway_is_down_never_runs_even_when_it_is_back(parts) -> None:
    mcp: McpService = parts["mcp"]
    facts = await mcp.gateway.facts(McpFactsQuery(tenant="acme", workspace="default", tool="mcp__files__echo"))
    mcp.gateway.pins.pin("acme", "", "files", "echo", facts.digest, facts.definition, "carol")
    signer = parts["signers"]["approval"]
    args = {"text": "while down"}
    decision = Decision(tenant="acme", workspace="default", session_id="s-1", call_id="c-down", tool="mcp__files__echo",
                        digest=call_digest(tenant="acme", workspace="default", session="s-1", tool="mcp__files__echo",
                                           args=args),
                        verdict="allow", reason="approved by carol", expires_at=utcnow() + timedelta(seconds=3))
    event = ToolCallDispatched(tenant="acme", call_id="c-down", workspace="default", session_id="s-1",
                               tool="mcp__files__echo", args=args, decision=SignedDecision.issue(signer, decision))
    await mcp.stop()
    await parts["conn"].publish(subjects.mcp_dispatched("acme", "default"), event)
    await asyncio.sleep(3.5)  # the decision expires while the gateway is down
    back = McpService(parts["settings"])
    await back.start()
    try:
        await parts["conn"].publish(subjects.mcp_dispatched("acme", "default"), event)  # redelivered, late
        async with asyncio.timeout(30):
            while not parts["completed"]:
                await asyncio.sleep(0.1)
        assert [(c.call_id, c.status) for c in parts["completed"]] == [("c-down", "denied")]
        assert "expired" in parts["completed"][0].reason
    finally:
        await back.stop()
