"""Rate limits on MCP tools (issue 14 item 3): the policy pack's shared limits, per tool and per server (a tool
glob `mcp__<server>__*`), decided by the real policy service with the gateway's facts, counted in JetStream KV.
Real nats-server, policy, the gateway and two MCP servers built with the SDK (stdio)."""

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
    SessionGrant,
    SignedGrant,
    Signer,
    ToolCallDecided,
    ToolCallRequested,
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
PACK = """\
version: "mcp-limits.1"
tenants:
  acme:
    rules:
      - {id: mcp-for-members, effect: allow, roles: [member], tools: ["mcp__*"]}
    limits:
      - {id: echo-rate, tools: [mcp__files__echo], per: user, max_calls: 3, window: 1m}
      - {id: files-server-rate, tools: ["mcp__files__*"], per: user, max_calls: 5, window: 1m}
      - {id: notes-server-tenant-rate, tools: ["mcp__notes__*"], per: tenant, max_calls: 2, window: 1h}
"""


class Policy:
    def __init__(self, conn: EventConnection, identity: Signer) -> None:
        self.conn, self.identity = conn, identity
        self.decided: dict[str, asyncio.Future] = {}

    def grant(self, user: str) -> SignedGrant:
        now = utcnow()
        return SignedGrant.issue(self.identity, SessionGrant(
            tenant="acme", workspace="default", user=user, roles=("member",), channel="cli", session_id=f"s-{user}",
            issued_at=now, expires_at=now + timedelta(minutes=5)))

    async def decide(self, user: str, tool: str, args: dict | None = None) -> Decision:
        grant, args = self.grant(user), args or {}
        request = ToolCallRequested(tenant="acme", grant=grant, workspace="default", session_id=grant.grant.session_id,
                                    tool=tool, args=args, digest=call_digest(
                                        tenant="acme", workspace="default", session=grant.grant.session_id,
                                        tool=tool, args=args))
        self.decided[request.call_id] = asyncio.get_running_loop().create_future()
        await self.conn.publish(subjects.tool_requested("acme"), request)
        return (await asyncio.wait_for(self.decided[request.call_id], 30)).decision.decision


@pytest.fixture()
async def policy(tmp_path: Path, fresh_nats):
    keys = tmp_path / "keys"
    keys.mkdir()
    identity = Signer.generate("identity")
    (keys / "identity.pub").write_bytes(identity.public_pem())
    (tmp_path / "policy.yaml").write_text(PACK)
    service = build_policy(PolicySettings(nats_url=fresh_nats.url, state_dir=tmp_path, keys_dir=keys,
                                          packs_from_bus=False, decide_timeout_ms=3000, mcp_facts_timeout_s=20))
    settings = McpSettings(nats_url=fresh_nats.url, state_dir=tmp_path, keys_dir=keys, list_timeout_s=20,
                           sandbox_stdio=False)
    command = f"[{sys.executable}, {UPSTREAM}, stdio]"
    settings.registry_file.write_text("tenants:\n  acme:\n    servers:\n"
                                      f"      files:\n        command: {command}\n"
                                      f"      notes:\n        command: {command}\n")
    mcp = McpService(settings)
    await policy_start(service, mcp)
    # Every tool used here is already approved (pinned): only the limits stand between a call and an allow.
    for tool in ("mcp__files__echo", "mcp__files__add", "mcp__notes__echo", "mcp__notes__add"):
        facts = await mcp.gateway.facts(McpFactsQuery(tenant="acme", workspace="default", tool=tool))
        assert facts.pin == "unpinned", facts
        mcp.gateway.pins.pin("acme", "", facts.server, facts.tool, facts.digest, facts.definition, "carol")
    conn = await EventConnection.connect(BusSettings(nats_url=fresh_nats.url), "mcp-limits")
    running = Policy(conn, identity)

    async def on_decided(msg) -> None:
        event = parse_event(msg.data)
        if isinstance(event, ToolCallDecided) and event.call_id in running.decided:
            running.decided[event.call_id].set_result(event)

    await conn.nc.subscribe(subjects.tool_decided("acme"), cb=on_decided)
    yield running
    await conn.close()
    await mcp.stop()
    await service.stop()


async def policy_start(policy, mcp) -> None:
    await policy.start()
    await mcp.start()


async def test_the_call_over_a_per_tool_limit_is_denied_naming_the_limit(policy: Policy) -> None:
    verdicts = [(await policy.decide("alice", "mcp__files__echo", {"text": str(i)})).verdict for i in range(3)]
    assert verdicts == ["allow"] * 3
    over = await policy.decide("alice", "mcp__files__echo", {"text": "4"})
    assert over.verdict == "deny"
    assert "over the limit echo-rate (3 calls per user per 1m)" in over.reason
    assert "limit:echo-rate" in " ".join(over.policy_ids)
    # Per user: bob's calls are counted apart; and the server's other tool is under no per-tool limit.
    assert (await policy.decide("bob", "mcp__files__echo", {"text": "1"})).verdict == "allow"
    assert (await policy.decide("alice", "mcp__files__add", {"a": 1, "b": 2})).verdict == "allow"


async def test_a_server_glob_limits_all_the_servers_tools_together(policy: Policy) -> None:
    calls = [("mcp__files__echo", {"text": "1"}), ("mcp__files__add", {"a": 1, "b": 1}),
             ("mcp__files__echo", {"text": "2"}), ("mcp__files__add", {"a": 2, "b": 2}),
             ("mcp__files__add", {"a": 3, "b": 3})]
    verdicts = [(await policy.decide("alice", tool, args)).verdict for tool, args in calls]
    assert verdicts == ["allow"] * 5
    over = await policy.decide("alice", "mcp__files__add", {"a": 4, "b": 4})
    assert over.verdict == "deny" and "over the limit files-server-rate (5 calls per user per 1m)" in over.reason
    # Another server's tools are not counted against this one.
    assert (await policy.decide("alice", "mcp__notes__echo", {"text": "1"})).verdict == "allow"


async def test_a_per_tenant_server_limit_counts_every_person_of_the_tenant(policy: Policy) -> None:
    assert (await policy.decide("alice", "mcp__notes__echo", {"text": "a"})).verdict == "allow"
    assert (await policy.decide("bob", "mcp__notes__add", {"a": 1, "b": 1})).verdict == "allow"
    over = await policy.decide("carol", "mcp__notes__echo", {"text": "c"})
    assert over.verdict == "deny" and "notes-server-tenant-rate (2 calls per tenant per 1h)" in over.reason
