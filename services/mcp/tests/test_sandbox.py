"""A stdio MCP server runs under bubblewrap: it answers as usual but sees none of the gateway's state (the
upstream credentials, the pins) and no network."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from caduceus_mcp import Server
from caduceus_mcp.sandbox import StdioSandbox
from caduceus_mcp.upstream import SecretStore, Upstream, call
from caduceus_sandbox import PolicyFiles, SandboxPolicy

from .conftest import UPSTREAMS

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


@pytest.mark.asyncio
async def test_a_sandboxed_stdio_server_works_but_cannot_read_the_gateways_secrets(tmp_path: Path) -> None:
    secrets = SecretStore(tmp_path / "mcp-secrets")
    stored = secrets.write("acme", "token", "tok-sandbox-5a1f")
    server = Server(tenant="acme", name="files", transport="stdio", command=(sys.executable, str(UPSTREAMS), "stdio"))
    upstream = Upstream(server, secrets, StdioSandbox(PolicyFiles(None, None)), connect_timeout_s=20)
    async with upstream.session() as client:
        echoed = await call(client, "echo", {"text": "inside"}, 10)
        assert echoed.content[0].text == "inside"
        peeked = await call(client, "peek", {"path": str(stored)}, 10)
        assert peeked.content[0].text.startswith("cannot read")
        hosts = await call(client, "peek", {"path": "/etc/hostname"}, 10)
        assert "tok-" not in hosts.content[0].text


def test_the_sandbox_profile_has_no_network_and_no_host_root(tmp_path: Path) -> None:
    argv = StdioSandbox(PolicyFiles(None, None), bwrap="/usr/bin/bwrap").command(
        SandboxPolicy(), ("/usr/bin/python3", "-m", "x"))
    assert "--unshare-all" in argv and "--die-with-parent" in argv
    binds = [argv[i + 1] for i, a in enumerate(argv) if a == "--ro-bind"]
    assert "/" not in binds and "/work" not in binds and str(tmp_path) not in binds
