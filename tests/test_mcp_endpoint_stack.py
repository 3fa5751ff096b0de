"""The MCP endpoint on the whole embedded stack, driven by the `mcp` SDK's own client: the tools a person may
use, a call denied by policy, a first use that waits for another admin's approval (the client asks again and gets
the result), and the next call running without asking. Real nats-server, Temporal, policy, approval, broker, the
gateway, and an upstream MCP server built with the SDK (streamable HTTP)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from caduceus_client import ApprovalsClient
from caduceus_embedded.ports import free_port, wait_for_port
from caduceus_embedded.stack import EmbeddedStack
from caduceus_identity.devtoken import mint_dev_token

pytestmark = pytest.mark.timeout(300)
UPSTREAMS = Path(__file__).parents[1] / "services" / "mcp" / "tests" / "upstreams.py"
ECHO = "mcp__notes__echo"
REVISIONS = [("legacy", "2025-11-25"), ("2026-07-28", "2026-07-28")]


@pytest.fixture(scope="module")
def notes(stack: EmbeddedStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """acme's `notes` server (over streamable HTTP), and dan, a second admin of acme who can approve carol's calls."""
    port = free_port()
    log = (tmp_path_factory.mktemp("upstream") / "notes.log").open("w")
    env = {k: v for k, v in os.environ.items() if k not in ("MCP_TEST_TOKEN", "MCP_TEST_RUG")}
    process = subprocess.Popen([sys.executable, str(UPSTREAMS), "http", str(port)], stdout=log, stderr=log, env=env)
    egress = stack.layout.root / "sandboxes" / "acme.yaml"
    try:
        assert wait_for_port(port, 30)
        tenants = yaml.safe_load(stack.layout.tenants_file.read_text())
        tenants["tenants"]["acme"]["users"]["dan"] = {"email": "dan@acme.example", "roles": ["admin"]}
        stack.layout.tenants_file.write_text(yaml.safe_dump(tenants))
        # acme's egress rules let the gateway reach the upstream on loopback (HTTP upstreams go through them).
        egress.parent.mkdir(exist_ok=True)
        egress.write_text(f"version: 1\nnetwork:\n  egress: allowlist\n  allow: [{{host: 127.0.0.1, ports: [{port}]}}]\n"
                          "  allow_addresses: [127.0.0.1/32]\n")
        (stack.layout.root / "mcp.yaml").write_text(
            "tenants:\n  acme:\n    servers:\n      notes:\n        scope: tenant\n"
            f"        url: http://127.0.0.1:{port}/mcp\n        approvers: admin\n")
        yield f"http://127.0.0.1:{stack.ports.mcp_endpoint}/mcp/acme"
    finally:
        process.terminate()
        process.wait(10)
        egress.unlink(missing_ok=True)


def token(stack: EmbeddedStack, user: str) -> str:
    return mint_dev_token(stack.info.dev_issuer_url, "acme", user, audience="caduceus-mcp")


def client(url: str, bearer: str, mode: str = "legacy") -> Client:
    return Client(streamable_http_client(url, http_client=httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {bearer}"}, timeout=60)), mode=mode, cache=None)


async def listed(url: str, bearer: str, mode: str = "legacy") -> set[str]:
    async with client(url, bearer, mode) as mcp:
        return {tool.name for tool in (await mcp.list_tools()).tools}


async def until_listed(url: str, bearer: str, timeout_s: float = 60.0) -> set[str]:
    """The gateway reloads its registry within a second and starts the upstream on first use."""
    deadline = time.monotonic() + timeout_s
    while True:
        names = await listed(url, bearer)
        if ECHO in names or time.monotonic() > deadline:
            return names
        await asyncio.sleep(0.5)


@pytest.mark.parametrize("mode, revision", REVISIONS)
async def test_an_admin_is_offered_the_servers_tools_in_both_revisions_and_a_member_none(
        stack: EmbeddedStack, notes: str, mode: str, revision: str) -> None:
    assert ECHO in await until_listed(notes, token(stack, "carol"))
    async with client(notes, token(stack, "carol"), mode) as mcp:
        assert mcp.protocol_version == revision
        tools = {tool.name: tool for tool in (await mcp.list_tools()).tools}
    assert {ECHO, "mcp__notes__add"} <= set(tools)
    assert tools[ECHO].description == "Echo text back." and "text" in tools[ECHO].input_schema["properties"]
    # acme's policy lets only admins use MCP tools: alice is offered none of them.
    assert not any(name.startswith("mcp__") for name in await listed(notes, token(stack, "alice"), mode))


async def test_a_members_call_is_denied_by_policy_and_nothing_runs(stack: EmbeddedStack, notes: str) -> None:
    await until_listed(notes, token(stack, "carol"))
    async with client(notes, token(stack, "alice")) as mcp:
        result = await mcp.call_tool(ECHO, {"text": "from alice"})
    assert result.is_error
    assert result.content[0].text.startswith("denied:")


async def test_first_use_waits_for_another_admin_then_the_same_call_gets_its_result_and_the_next_runs(
        stack: EmbeddedStack, notes: str) -> None:
    carol = token(stack, "carol")
    await until_listed(notes, carol)
    async with client(notes, carol, "2026-07-28") as mcp:
        waiting = await mcp.call_tool(ECHO, {"text": "first"})
        assert waiting.is_error, waiting
        assert waiting.content[0].text.startswith("waiting for approval")
        assert "Call the tool again with the same arguments" in waiting.content[0].text

        async with ApprovalsClient(stack.info.approval_ui_url, mint_dev_token(
                stack.info.dev_issuer_url, "acme", "dan")) as approvals:
            view = await approvals.wait_for(lambda v: v.tool == ECHO,
                                            timeout_s=30)
            assert view.requester == "carol"
            await approvals.answer(view.call_id, "approve", digest=view.digest)

        again = await mcp.call_tool(ECHO, {"text": "first"})
        assert not again.is_error, again
        assert again.content[0].text == "first"
        # Pinned now: another call of the same tool runs without asking anyone.
        started = time.monotonic()
        second = await mcp.call_tool(ECHO, {"text": "second"})
        assert (second.is_error, second.content[0].text) == (False, "second")
        assert time.monotonic() - started < 20
