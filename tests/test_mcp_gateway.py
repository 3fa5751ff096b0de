"""The MCP gateway with the real policy service, a real nats-server and a real MCP server (SDK, stdio): what a
person is offered, how policy decides an MCP call with the gateway's facts, and what approval pins."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from caduceus.cli import app
from caduceus_bus import BusSettings, EventConnection
from caduceus_contracts import (
    Decision,
    McpPinChanged,
    McpServerChanged,
    McpToolsAnswer,
    McpToolsQuery,
    SessionGrant,
    SignedDecision,
    SignedGrant,
    Signer,
    ToolCallCompleted,
    ToolCallDecided,
    ToolCallDispatched,
    ToolCallRequested,
    call_digest,
    parse_event,
    subjects,
    utcnow,
)
from caduceus_mcp import McpService, McpSettings, SecretStore
from caduceus_policy import PolicySettings
from caduceus_policy.app import build as build_policy

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(180)]
UPSTREAM = Path(__file__).resolve().parents[1] / "services" / "mcp" / "tests" / "upstreams.py"
PACK = """\
version: "mcp-test.1"
tenants:
  acme:
    approvals: {approvers: admin, quorum: 1, timeout: 15m}
    rules:
      - {id: members-echo, effect: allow, roles: [member, admin], tools: [mcp__files__echo]}
      - {id: admins-mcp, effect: allow, roles: [admin], tools: ["mcp__*"]}
      - {id: nobody-hangs, effect: deny, tools: [mcp__files__hang], reason: never}
"""


class Stack:
    def __init__(self, conn: EventConnection, identity: Signer, approval: Signer, mcp: McpService, rug: Path):
        self.conn, self.identity, self.approval, self.mcp, self.rug = conn, identity, approval, mcp, rug
        self.decided: dict[str, asyncio.Future] = {}
        self.completed: dict[str, asyncio.Future] = {}
        self.events: list = []

    def grant(self, user: str, roles: tuple[str, ...]) -> SignedGrant:
        now = utcnow()
        return SignedGrant.issue(self.identity, SessionGrant(
            tenant="acme", workspace="default", user=user, roles=roles, channel="cli", session_id=f"s-{user}",
            issued_at=now, expires_at=now + timedelta(minutes=5)))

    async def listed(self, grant: SignedGrant) -> set[str]:
        reply = await self.conn.nc.request(subjects.mcp_tools("acme", "default"),
                                           McpToolsQuery(grant=grant).model_dump_json().encode(), timeout=30)
        return {t.name for t in McpToolsAnswer.model_validate_json(reply.data).tools}

    async def withheld(self, grant: SignedGrant) -> set[str]:
        reply = await self.conn.nc.request(subjects.mcp_tools("acme", "default"),
                                           McpToolsQuery(grant=grant).model_dump_json().encode(), timeout=30)
        return set(McpToolsAnswer.model_validate_json(reply.data).withheld)

    async def decide(self, grant: SignedGrant, tool: str, args: dict) -> tuple[ToolCallRequested, Decision, ToolCallDecided]:
        g = grant.grant
        request = ToolCallRequested(tenant="acme", grant=grant, workspace="default", session_id=g.session_id,
                                    tool=tool, args=args, digest=call_digest(tenant="acme", workspace="default",
                                                                             session=g.session_id, tool=tool, args=args))
        self.decided[request.call_id] = asyncio.get_running_loop().create_future()
        await self.conn.publish(subjects.tool_requested("acme"), request)
        decided = await asyncio.wait_for(self.decided[request.call_id], 30)
        return request, decided.decision.decision, decided

    async def run(self, request: ToolCallRequested, signed: SignedDecision) -> ToolCallCompleted:
        """What the broker does with an allow: dispatch to the gateway, then wait for the outcome."""
        self.completed[request.call_id] = asyncio.get_running_loop().create_future()
        await self.conn.publish(subjects.mcp_dispatched("acme", "default"), ToolCallDispatched(
            tenant="acme", call_id=request.call_id, workspace="default", session_id=request.session_id,
            tool=request.tool, args=request.args, decision=signed))
        return await asyncio.wait_for(self.completed[request.call_id], 30)

    def approve(self, decision: Decision) -> SignedDecision:
        """What the approval service signs when carol approves: the same call, with what she was shown."""
        approved = decision.model_copy(update={"verdict": "allow", "reason": "approved by carol",
                                               "expires_at": utcnow() + timedelta(minutes=1)})
        return SignedDecision.issue(self.approval, approved)


@pytest.fixture()
async def stack(tmp_path: Path, nats_server):
    keys = tmp_path / "keys"
    keys.mkdir()
    identity, approval = Signer.generate("identity"), Signer.generate("approval")
    for signer in (identity, approval):
        (keys / f"{signer.issuer}.pub").write_bytes(signer.public_pem())
    (tmp_path / "policy.yaml").write_text(PACK)
    policy = build_policy(PolicySettings(nats_url=nats_server.url, state_dir=tmp_path, keys_dir=keys,
                                         packs_from_bus=False, decide_timeout_ms=2000, mcp_facts_timeout_s=20))
    mcp_settings = McpSettings(nats_url=nats_server.url, state_dir=tmp_path, keys_dir=keys, list_timeout_s=20,
                               listing_refresh_s=1)
    # The hostile server looks for its marker in a directory the tenant's sandbox policy lets it read.
    (tmp_path / "marker").mkdir()
    rug = tmp_path / "marker" / "rug"
    (tmp_path / "sandbox.yaml").write_text(
        f"version: 1\nfilesystem:\n  read_only: [/usr, /bin, /lib, /lib64, /etc/ssl/certs, {tmp_path / 'marker'}]\n")
    mcp_settings.registry_file.write_text(
        "tenants:\n  acme:\n    servers:\n      files:\n"
        f"        command: [{sys.executable}, {UPSTREAM}, stdio]\n        env: {{MCP_TEST_RUG: {rug}}}\n"
        "        approvers: admin\n")
    SecretStore(mcp_settings.secrets_dir)
    mcp = McpService(mcp_settings)
    await policy.start()
    await mcp.start()
    conn = await EventConnection.connect(BusSettings(nats_url=nats_server.url), "mcp-e2e")
    running = Stack(conn, identity, approval, mcp, rug)

    async def on_decided(msg) -> None:
        event = parse_event(msg.data)
        if isinstance(event, ToolCallDecided) and event.call_id in running.decided:
            running.decided[event.call_id].set_result(event)

    async def on_completed(msg) -> None:
        event = parse_event(msg.data)
        if isinstance(event, ToolCallCompleted) and event.call_id in running.completed:
            running.completed[event.call_id].set_result(event)

    async def on_mcp_event(msg) -> None:
        running.events.append(parse_event(msg.data))

    await conn.nc.subscribe(subjects.MCP_EVENTS, cb=on_mcp_event)
    await conn.nc.subscribe(subjects.tool_decided("acme"), cb=on_decided)
    await conn.nc.subscribe(subjects.tool_completed("acme", "default"), cb=on_completed)
    yield running
    await conn.close()
    await mcp.stop()
    await policy.stop()


async def test_each_person_is_offered_only_the_mcp_tools_policy_could_ever_allow_them(stack: Stack) -> None:
    alice = await stack.listed(stack.grant("alice", ("member",)))
    carol = await stack.listed(stack.grant("carol", ("admin",)))
    assert alice == {"mcp__files__echo"}
    assert {"mcp__files__echo", "mcp__files__add", "mcp__files__whoami"} <= carol
    assert "mcp__files__hang" not in carol  # denied to everyone, so listed to no one
    assert await stack.listed(stack.grant("mallory", ("guest",))) == set()


async def test_first_use_waits_for_approval_then_runs_without_asking_until_the_definition_changes(stack) -> None:
    alice = stack.grant("alice", ("member",))
    request, decision, decided = await stack.decide(alice, "mcp__files__echo", {"text": "hello"})
    assert decision.verdict == "approve" and decision.approver_group == "admin"
    assert "first use of MCP tool mcp__files__echo" in decision.reason and "Echo text back." in decision.reason
    # Policy's approve alone runs nothing.
    assert (await stack.run(request, decided.decision)).status == "denied"

    request, decision, _ = await stack.decide(alice, "mcp__files__echo", {"text": "hello"})
    done = await stack.run(request, stack.approve(decision))
    assert (done.status, done.result) == ("ok", "hello")
    assert [p.tool for p in stack.mcp.gateway.pins.list("acme")] == ["echo"]

    request, decision, decided = await stack.decide(alice, "mcp__files__echo", {"text": "again"})
    assert decision.verdict == "allow"
    done = await stack.run(request, decided.decision)
    assert (done.status, done.result) == ("ok", "again")

    stack.rug.touch()  # the server now describes echo differently
    # The gateway lists its servers again every few seconds (a call is checked against what is served then).
    async with asyncio.timeout(60):
        while "mcp__files__echo" in await stack.listed(alice):
            await asyncio.sleep(0.5)
    _, decision, _ = await stack.decide(alice, "mcp__files__echo", {"text": "once more"})
    assert decision.verdict == "deny" and "definition changed" in decision.reason
    assert await stack.withheld(alice) == {"mcp__files__echo"}  # named, its new definition never shown


async def test_an_mcp_call_is_denied_when_the_gateway_cannot_vouch_for_the_tool(stack) -> None:
    carol = stack.grant("carol", ("admin",))
    _, decision, _ = await stack.decide(carol, "mcp__nowhere__thing", {})
    assert decision.verdict == "deny" and "cannot vouch" in decision.reason
    await stack.mcp.stop()  # the gateway is down: policy gets no facts and denies
    _, decision, _ = await stack.decide(carol, "mcp__files__echo", {"text": "x"})
    assert decision.verdict == "deny" and "fail closed" in decision.reason


async def until(predicate, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


async def test_registry_changes_and_revoked_pins_from_the_cli_are_live_and_audited(stack, tmp_path) -> None:
    state = str(tmp_path)
    cli = CliRunner()
    added = cli.invoke(app, ["mcp", "servers", "add", "acme", "more", "--command",
                             f"{sys.executable} {UPSTREAM} stdio", "--workspace", "default", "--state-dir", state])
    assert added.exit_code == 0, added.output
    await until(lambda: any(isinstance(e, McpServerChanged) and e.server == "more" and e.action == "added"
                            for e in stack.events))
    assert "mcp__more__echo" in await stack.listed(stack.grant("carol", ("admin",)))

    alice = stack.grant("alice", ("member",))
    request, decision, _ = await stack.decide(alice, "mcp__files__echo", {"text": "pin me"})
    assert (await stack.run(request, stack.approve(decision))).status == "ok"
    revoked = cli.invoke(app, ["mcp", "pins", "revoke", "acme", "files", "echo", "--state-dir", state, "--json"])
    assert revoked.exit_code == 0, revoked.output
    await until(lambda: any(isinstance(e, McpPinChanged) and e.action == "revoked" for e in stack.events))
    _, decision, _ = await stack.decide(alice, "mcp__files__echo", {"text": "again"})
    assert decision.verdict == "approve"  # revoked: the next call waits for approval again

    removed = cli.invoke(app, ["mcp", "servers", "remove", "acme", "more", "--state-dir", state])
    assert removed.exit_code == 0, removed.output
    await until(lambda: any(isinstance(e, McpServerChanged) and e.action == "removed" for e in stack.events))
