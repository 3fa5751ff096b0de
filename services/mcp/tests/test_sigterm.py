"""SIGTERM while an outside MCP client's tools/call is in progress at the MCP endpoint: its outcome, arriving over
the bus after the signal, still reaches the client; a new request is refused at the door; the process exits 0. The
gateway runs as `python -m caduceus_mcp`, the way `caduceus up`, compose and Kubernetes run it; the test stands in
for identity (the person's grant), policy (the decision) and whoever runs the call (its outcome)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from caduceus_bus import BusSettings, EventConnection
from caduceus_contracts import (
    Decision,
    GrantAnswer,
    GrantRequested,
    SessionGrant,
    SignedDecision,
    SignedGrant,
    ToolCallCompleted,
    ToolCallDecided,
    ToolCallRequested,
    ensure_signer,
    parse_event,
    subjects,
    utcnow,
)
from caduceus_directory.testing import TENANTS
from caduceus_embedded.ports import free_port

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]
TOOL = "mcp__notes__search"
REVISION = "2025-11-25"  # the handshake revision Hermes 0.19's MCP client speaks
OUTCOME_AFTER_S = 3.0  # longer than the 2 s the endpoint used to give a request in progress


@dataclass
class Running:
    """The gateway as a process, and the stand-ins' view of the bus."""

    bus: EventConnection
    process: subprocess.Popen
    url: str
    requested: list[ToolCallRequested]
    headers: dict[str, str]

    async def calling(self, client: httpx.AsyncClient) -> asyncio.Task:
        """alice's tools/call, once it has reached the bus (and policy has allowed it)."""
        search = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                  "params": {"name": TOOL, "arguments": {"query": "quarterly plan"}}}
        task = asyncio.create_task(client.post(self.url, json=search, headers=self.headers))
        for _ in range(200):
            if self.requested:
                return task
            await asyncio.sleep(0.05)
        raise AssertionError("the call never reached the bus")

    async def exits(self) -> str:
        output = (await asyncio.to_thread(self.process.communicate, timeout=30))[0].decode()
        assert self.process.returncode == 0, output[-3000:]
        return output


@asynccontextmanager
async def gateway_process(tmp_path: Path, nats_url: str, **env_extra: str) -> AsyncIterator[Running]:
    """`python -m caduceus_mcp` with its endpoint, identity and policy (allowing every call) stood in for."""
    (tmp_path / "tenants.yaml").write_text(TENANTS)
    identity, policy = ensure_signer(tmp_path / "keys", "identity"), ensure_signer(tmp_path / "keys", "policy")
    bus = await EventConnection.connect(BusSettings(nats_url=nats_url), "identity-policy-broker-stand-in")
    requested: list[ToolCallRequested] = []

    async def grant(msg: Any) -> None:
        asked = GrantRequested.model_validate_json(msg.data)
        now = utcnow()
        signed = SignedGrant.issue(identity, SessionGrant(
            tenant=asked.tenant, workspace=asked.workspace, user="alice", roles=("member",), channel=asked.channel,
            session_id=asked.session_id, issued_at=now - timedelta(seconds=5), expires_at=now + timedelta(minutes=5)))
        await msg.respond(GrantAnswer(grant=signed).model_dump_json().encode())

    async def decide(msg: Any) -> None:
        call = parse_event(msg.data, expect=ToolCallRequested, subject=msg.subject)
        requested.append(call)
        decision = Decision(tenant=call.tenant, workspace=call.workspace, session_id=call.session_id,
                            call_id=call.call_id, tool=call.tool, digest=call.digest, verdict="allow",
                            reason="members may search notes", policy_ids=("members-search-notes",),
                            expires_at=utcnow() + timedelta(seconds=60))
        await bus.publish(subjects.tool_decided(call.tenant),
                          ToolCallDecided(tenant=call.tenant, call_id=call.call_id, workspace=call.workspace,
                                          decision=SignedDecision.issue(policy, decision)))

    await bus.nc.subscribe(subjects.identity_grant("acme"), cb=grant)
    await bus.subscribe(subjects.tool_requested("acme"), decide)
    port = free_port()
    env = {**os.environ, "CADUCEUS_NATS_URL": nats_url, "CADUCEUS_STATE_DIR": str(tmp_path),
           "CADUCEUS_ENDPOINT_PORT": str(port), "CADUCEUS_OIDC_ISSUER_URL": "http://127.0.0.1:9/issuer",
           "CADUCEUS_SANDBOX_STDIO": "false", **env_extra}
    process = subprocess.Popen([sys.executable, "-m", "caduceus_mcp"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    try:
        await healthy(bus)
        yield Running(bus, process, f"http://127.0.0.1:{port}/mcp/acme", requested, headers={
            "Authorization": "Bearer alice-access-token", "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": REVISION})
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        await bus.close()


async def test_a_call_in_progress_at_sigterm_gets_its_result_and_nothing_new_is_taken(tmp_path: Path,
                                                                                    fresh_nats: Any) -> None:
    async with gateway_process(tmp_path, fresh_nats.url) as gateway, httpx.AsyncClient(timeout=30) as client:
        calling = await gateway.calling(client)
        gateway.process.send_signal(signal.SIGTERM)  # decided, and waiting for its outcome
        signalled = time.monotonic()
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient() as another:
            with pytest.raises(httpx.ConnectError):  # stopping: a new request is not taken
                await another.post(gateway.url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                                   headers=gateway.headers)
        await asyncio.sleep(OUTCOME_AFTER_S - 0.5)
        call = gateway.requested[0]
        await gateway.bus.publish(subjects.tool_completed(call.tenant, call.workspace),
                                  ToolCallCompleted(tenant=call.tenant, call_id=call.call_id, workspace=call.workspace,
                                                    session_id=call.session_id, tool=call.tool, status="ok",
                                                    result="3 notes mention the quarterly plan", executed_by="mcp"))
        answered = await asyncio.wait_for(calling, 10)
        assert answered.status_code == 200, answered.text
        result = answered.json()["result"]
        assert not result.get("isError")
        assert [block["text"] for block in result["content"]] == ["3 notes mention the quarterly plan"]
        await gateway.exits()
        assert time.monotonic() - signalled < 8 + 6, "the drain is bounded (CADUCEUS_ENDPOINT_DRAIN_S, 8 s, and the stop)"
        assert len(gateway.requested) == 1


async def test_a_call_whose_outcome_outlasts_the_drain_is_answered_call_again_not_cut(tmp_path: Path,
                                                                                      fresh_nats: Any) -> None:
    """Its outcome does not come within the drain: the client gets a result saying to call again (the call goes
    on; another replica takes it up), never an HTTP error in the middle of a call."""
    async with gateway_process(tmp_path, fresh_nats.url, CADUCEUS_ENDPOINT_DRAIN_S="2") as gateway, \
            httpx.AsyncClient(timeout=30) as client:
        calling = await gateway.calling(client)
        gateway.process.send_signal(signal.SIGTERM)
        answered = await asyncio.wait_for(calling, 10)
        assert answered.status_code == 200, answered.text
        result = answered.json()["result"]
        assert result["isError"]
        assert "Call the tool again with the same arguments to get its outcome" in result["content"][0]["text"]
        await gateway.exits()


async def healthy(bus: EventConnection) -> None:
    for _ in range(300):
        try:
            if (await bus.nc.request("caduceus.health.mcp", b"", timeout=0.2)).data == b"ok":
                return
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            await asyncio.sleep(0.1)
    raise AssertionError("the MCP gateway did not answer its health check within 60 s")
