"""The gateway as a service on a real nats-server: tool lists and facts answered on request, dispatched MCP
calls answered with a tool.completed event, a broken registry edit keeps the last good registry."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from caduceus_bus import BusSettings, EventConnection
from caduceus_contracts import (
    McpFactsQuery,
    McpToolFacts,
    McpToolsAnswer,
    McpToolsQuery,
    ToolCallCompleted,
    parse_event,
    subjects,
)
from caduceus_mcp import McpService, McpSettings, SecretStore

from .conftest import TOKEN, Keys, dispatched, grant, stdio_server, write_registry

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]


@pytest.fixture()
async def service(tmp_path: Path, nats_server, keys: Keys):
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    for signer in (keys.identity, keys.policy, keys.approval):
        (keys_dir / f"{signer.issuer}.pub").write_bytes(signer.public_pem())
    settings = McpSettings(state_dir=tmp_path, nats_url=nats_server.url, list_timeout_s=20, call_timeout_s=5,
                           policy_timeout_s=0.5)
    write_registry(settings.registry_file, stdio_server("files", tmp_path / "rug"))
    SecretStore(settings.secrets_dir).write("acme", "upstream-token", TOKEN)
    running = McpService(settings)
    await running.start()
    yield running
    await running.stop()


async def test_the_service_answers_tool_lists_facts_and_calls_on_the_bus(service, nats_server, keys) -> None:
    conn = await EventConnection.connect(BusSettings(nats_url=nats_server.url), "mcp-test")
    try:
        reply = await conn.nc.request("caduceus.health.mcp", b"", timeout=5)
        assert reply.data == b"ok"
        query = McpToolsQuery(grant=grant(keys))
        reply = await conn.nc.request(subjects.mcp_tools("acme", "default"), query.model_dump_json().encode(),
                                      timeout=30)
        # No policy answers which tools alice could ever use: she is offered none (fail closed).
        assert McpToolsAnswer.model_validate_json(reply.data).tools == ()
        # A grant for one workspace is refused for another's list.
        reply = await conn.nc.request(subjects.mcp_tools("acme", "other"), query.model_dump_json().encode(),
                                      timeout=30)
        other = McpToolsAnswer.model_validate_json(reply.data)
        assert other.tools == () and "not acme/other" in other.problems[0]

        facts_query = McpFactsQuery(tenant="acme", workspace="default", tool="mcp__files__echo")
        reply = await conn.nc.request(subjects.mcp_facts("acme"), facts_query.model_dump_json().encode(), timeout=30)
        facts = McpToolFacts.model_validate_json(reply.data)
        assert (facts.server, facts.pin, facts.annotations.get("readOnlyHint")) == ("files", "unpinned", True)

        outcomes: asyncio.Queue = asyncio.Queue()

        async def on_completed(msg) -> None:
            await outcomes.put(parse_event(msg.data))

        await conn.nc.subscribe(subjects.tool_completed("acme", "default"), cb=on_completed)
        call = dispatched(keys, "mcp__files__echo", {"text": "via the bus"}, signer=keys.approval,
                          definition_digest=facts.digest)
        await conn.publish(subjects.mcp_dispatched("acme", "default"), call)
        done = await asyncio.wait_for(outcomes.get(), 30)
        assert isinstance(done, ToolCallCompleted)
        assert (done.call_id, done.status, done.result) == (call.call_id, "ok", "via the bus")
    finally:
        await conn.close()


async def test_a_broken_registry_edit_keeps_the_last_good_registry(service, tmp_path) -> None:
    registry = service.gateway.registry
    assert registry.registry.server("acme", "files") is not None
    registry.path.write_text("tenants:\n  acme:\n    servers:\n      files: {colour: blue}\n")
    registry.refresh()
    assert "line 4" in (registry.problem or "")
    assert registry.registry.server("acme", "files") is not None
    write_registry(registry.path, "")
    registry.refresh()
    assert registry.problem is None
