"""Streamable HTTP upstreams are reached only through the tenant's egress rules (issue 14 item 1): an allowed
server works (through the egress proxy), anything else is refused before a byte is sent, with an error that names
the rule; registering such a server warns. Real SDK servers and real listeners on loopback."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from caduceus.cli import app
from caduceus_contracts import McpFactsQuery
from caduceus_mcp import McpGateway

from .conftest import Keys, allow_egress, dispatched, grant, write_registry

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]


class Listener:
    """A loopback TCP listener that counts the connections it gets (an upstream that must never be reached)."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> Listener:
        async def accept(reader, writer) -> None:
            self.connections += 1
            writer.close()

        self.server = await asyncio.start_server(accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def close(self) -> None:
        assert self.server is not None
        self.server.close()


@pytest.fixture()
async def listener():
    running = await Listener().start()
    yield running
    running.close()


def register(gateway: McpGateway, url: str) -> None:
    write_registry(gateway.registry.path, f"      web:\n        url: {url}\n"
                   "        credentials: {headers: {Authorization: 'Bearer {upstream-token}'}}\n")


async def refused_everywhere(gateway: McpGateway, keys: Keys, why: str) -> None:
    """Not listed (the problem says why), no facts (policy denies), and a call with an approval errors."""
    listed = await gateway.tools_for(grant(keys).grant)
    assert listed.tools == ()
    assert len(listed.problems) == 1 and why in listed.problems[0], listed.problems
    facts = await gateway.facts(McpFactsQuery(tenant="acme", workspace="default", tool="mcp__web__echo"))
    assert facts.pin == "unknown"
    done = await gateway.call(dispatched(keys, "mcp__web__echo", {"text": "x"}, signer=keys.approval,
                                         definition_digest="a" * 64))
    assert done.status == "error" and why in done.reason, done
    assert done.result == ""


async def test_an_allowed_http_upstream_is_reached_through_the_egress_proxy(gateway, keys, http_upstream) -> None:
    register(gateway, http_upstream)
    facts = await gateway.facts(McpFactsQuery(tenant="acme", workspace="default", tool="mcp__web__echo"))
    assert facts.pin == "unpinned"
    done = await gateway.call(dispatched(keys, "mcp__web__echo", {"text": "via proxy"}, signer=keys.approval,
                                         definition_digest=facts.digest))
    assert (done.status, done.result) == ("ok", "via proxy")
    assert len(gateway.egress._proxies) == 1  # the connection went through the tenant's egress proxy


async def test_without_egress_rules_no_http_upstream_is_reached(gateway, keys, listener) -> None:
    register(gateway, f"http://127.0.0.1:{listener.port}/mcp")
    await refused_everywhere(gateway, keys, "egress is `none`")
    assert listener.connections == 0


async def test_a_port_the_allowlist_does_not_name_is_refused_and_never_connected(gateway, keys, listener,
                                                                                  tmp_path: Path) -> None:
    allow_egress(tmp_path, f"[{{host: 127.0.0.1, ports: [{listener.port + 1}]}}]")
    register(gateway, f"http://127.0.0.1:{listener.port}/mcp")
    await refused_everywhere(gateway, keys, f"127.0.0.1:{listener.port} is not on its egress allowlist")
    assert listener.connections == 0


async def test_an_allowed_name_that_resolves_to_loopback_is_refused_unless_the_address_is_allowed(
        gateway, keys, listener, tmp_path: Path) -> None:
    # `localhost` is on the allowlist, but it resolves to loopback, which the rules do not open.
    allow_egress(tmp_path, f"[{{host: localhost, ports: [{listener.port}]}}]", addresses="[]")
    register(gateway, f"http://localhost:{listener.port}/mcp")
    await refused_everywhere(gateway, keys, "loopback address")
    assert listener.connections == 0


async def test_the_rules_of_the_callers_workspace_apply(gateway, keys, listener, http_upstream,
                                                        tmp_path: Path) -> None:
    # acme's rules allow the server; acme's `locked` workspace has its own policy, with no network.
    (tmp_path / "sandboxes" / "acme").mkdir()
    (tmp_path / "sandboxes" / "acme" / "locked.yaml").write_text("version: 1\nnetwork: {egress: none}\n")
    register(gateway, http_upstream)
    assert "mcp__web__echo" in {t.name for t in (await gateway.tools_for(grant(keys).grant)).tools}
    locked = await gateway.tools_for(grant(keys, workspace="locked").grant)
    assert locked.tools == () and "egress is `none`" in locked.problems[0]
    done = await gateway.call(dispatched(keys, "mcp__web__echo", {"text": "x"}, signer=keys.approval,
                                         definition_digest="a" * 64, workspace="locked"))
    assert done.status == "error" and "egress rules of acme/locked" in done.reason


async def test_registering_a_server_the_egress_rules_refuse_warns(tmp_path: Path) -> None:
    cli = CliRunner()
    refused = cli.invoke(app, ["mcp", "servers", "add", "acme", "web", "--url", "https://mcp.example.com/mcp",
                               "--state-dir", str(tmp_path), "--json"])
    assert refused.exit_code == 0, refused.output
    warnings = json.loads(refused.stdout)["warnings"]
    assert len(warnings) == 1 and "refuse https://mcp.example.com/mcp: its egress is `none`" in warnings[0]

    (tmp_path / "sandbox.yaml").write_text(
        "version: 1\nnetwork: {egress: allowlist, allow: [{host: mcp.example.com, ports: [443]}]}\n")
    allowed = cli.invoke(app, ["mcp", "servers", "add", "acme", "web", "--url", "https://mcp.example.com/mcp",
                               "--state-dir", str(tmp_path), "--json"])
    assert json.loads(allowed.stdout)["warnings"] == []
    text = cli.invoke(app, ["mcp", "servers", "add", "acme", "other", "--url", "https://other.example.com/mcp",
                            "--workspace", "research", "--state-dir", str(tmp_path)])
    assert text.exit_code == 0
    assert "warning: the egress rules of acme/research" in text.output
    assert "other.example.com:443 is not on its egress allowlist" in text.output
