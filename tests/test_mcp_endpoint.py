"""The MCP endpoint for other clients, driven by the `mcp` SDK's own client over streamable HTTP: OAuth 2.1
protected-resource metadata, audience-bound tokens verified by the real identity service (real dev issuer, real
nats-server), and both protocol eras (the handshake Hermes 0.19's client speaks, and the newest revision)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types.version import LATEST_HANDSHAKE_VERSION, LATEST_PROTOCOL_VERSION

from caduceus_bus import BusSettings, CallClaims, EventConnection
from caduceus_contracts import ReloadingKeyring
from caduceus_directory.testing import TENANTS
from caduceus_embedded.ports import free_port
from caduceus_identity.adapters.dev_issuer import TokenRequest
from caduceus_identity.app import IdentityService, bootstrap
from caduceus_identity.devtoken import mint_dev_token
from caduceus_identity.settings import IdentitySettings
from caduceus_mcp import McpService, McpSettings, build
from caduceus_mcp.endpoint import (
    EndpointConfig,
    GovernedCalls,
    GrantDesk,
    McpEndpoint,
    ask_identity,
    closer,
    mcp_server,
)

MCP_AUDIENCE = "caduceus-mcp"
# The handshake revision of mcp 1.26 (the SDK Hermes 0.19 pins), and the newest published revision.
HERMES_REVISION = "2025-11-25"
NEWEST_REVISION = "2026-07-28"


UPSTREAMS = Path(__file__).parents[1] / "services" / "mcp" / "tests" / "upstreams.py"


@dataclass
class Stack:
    identity: IdentityService
    mcp: McpService
    url: str
    bus: EventConnection

    @property
    def issuer_url(self) -> str:
        assert self.identity.dev_issuer is not None
        return self.identity.dev_issuer.issuer.issuer_url


@pytest.fixture(scope="module")
async def stack(nats_server, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """Identity (with its dev issuer) and the MCP gateway serving its endpoint, on a real nats-server; acme has
    one upstream MCP server (built with the SDK, over stdio)."""
    state = tmp_path_factory.mktemp("state")
    (state / "tenants.yaml").write_text(TENANTS)
    (state / "mcp.yaml").write_text(
        "tenants:\n  acme:\n    servers:\n      notes:\n        scope: tenant\n"
        f"        command: [{sys.executable}, {UPSTREAMS}, stdio]\n        approvers: admin\n")
    identity = bootstrap(IdentitySettings(nats_url=nats_server.url, state_dir=state, dev_issuer_port=free_port()))
    await identity.start()
    port = free_port()
    gateway = build(McpSettings(nats_url=nats_server.url, state_dir=state, endpoint_port=port, sandbox_stdio=False,
                                oidc_issuer_url=identity.dev_issuer_url, endpoint_decision_timeout_s=2.0,
                                endpoint_approval_wait_s=2.0))
    await gateway.start()
    bus = await EventConnection.connect(BusSettings(nats_url=nats_server.url), "mcp-endpoint-tests")
    yield Stack(identity, gateway, f"http://127.0.0.1:{port}", bus)
    await bus.close()
    await gateway.stop()
    await identity.stop()


async def token(stack: Stack, user: str = "alice", tenant: str = "acme", audience: str | None = MCP_AUDIENCE,
                ttl_s: int | None = None) -> str:
    return await asyncio.to_thread(mint_dev_token, stack.issuer_url, tenant, user, None, ttl_s, audience=audience)


def client(url: str, token: str | None, mode: str = "legacy") -> Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return Client(streamable_http_client(url, http_client=httpx2.AsyncClient(headers=headers, timeout=30)),
                  mode=mode, cache=None)


@pytest.mark.parametrize("mode, revision", [("legacy", HERMES_REVISION), (NEWEST_REVISION, NEWEST_REVISION)])
async def test_both_protocol_revisions_are_served(stack: Stack, mode: str, revision: str) -> None:
    assert LATEST_HANDSHAKE_VERSION == HERMES_REVISION and LATEST_PROTOCOL_VERSION == NEWEST_REVISION
    async with client(f"{stack.url}/mcp/acme", await token(stack), mode) as mcp:
        assert mcp.protocol_version == revision
        listed = await mcp.list_tools()
    # No policy answers here which tools alice could ever use: she is offered none (the gateway fails closed).
    # Tool lists and calls with policy, approvals and a real upstream: test_mcp_endpoint_stack.py.
    assert listed.tools == []


async def test_no_token_gets_401_pointing_at_metadata_that_names_the_tenants_issuer(stack: Stack) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{stack.url}/mcp/acme", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                                   headers={"Accept": "application/json, text/event-stream"})
        assert response.status_code == 401
        challenge = response.headers["www-authenticate"]
        metadata_url = f"{stack.url}/.well-known/oauth-protected-resource/mcp/acme"
        assert challenge == f'Bearer resource_metadata="{metadata_url}"'
        metadata = (await http.get(metadata_url)).json()
    assert metadata["resource"] == f"{stack.url}/mcp/acme"
    assert metadata["authorization_servers"] == [stack.issuer_url]
    assert metadata["bearer_methods_supported"] == ["header"]


async def test_a_workspace_path_has_its_own_resource_metadata(stack: Stack) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{stack.url}/.well-known/oauth-protected-resource/mcp/globex/research")
        unknown = await http.get(f"{stack.url}/.well-known/oauth-protected-resource/mcp/nosuch")
    assert response.json()["resource"] == f"{stack.url}/mcp/globex/research"
    assert unknown.status_code == 404


async def refusal(stack: Stack, path: str, bearer: str) -> tuple[int, str, str]:
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{stack.url}{path}", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                                   headers={"Accept": "application/json, text/event-stream",
                                            "Authorization": f"Bearer {bearer}",
                                            "MCP-Protocol-Version": HERMES_REVISION})
    return response.status_code, response.headers.get("www-authenticate", ""), response.text


async def test_a_token_for_the_chat_audience_is_refused(stack: Stack) -> None:
    status, challenge, body = await refusal(stack, "/mcp/acme", await token(stack, audience=None))
    assert status == 401
    assert 'error="invalid_token"' in challenge and "resource_metadata=" in challenge
    assert "token is for audience 'caduceus', not 'caduceus-mcp'" in body


async def test_an_expired_token_is_refused(stack: Stack) -> None:
    assert stack.identity.dev_issuer is not None
    issuer = stack.identity.dev_issuer.issuer
    expired = issuer.mint(TokenRequest(tenant="acme", user="alice", ttl_s=600, audience=MCP_AUDIENCE),
                          now=time.time() - 3600)
    status, challenge, body = await refusal(stack, "/mcp/acme", expired)
    assert status == 401 and 'error="invalid_token"' in challenge
    assert "token expired at" in body


async def test_another_tenants_path_is_refused_with_this_tenants_token(stack: Stack) -> None:
    status, _, body = await refusal(stack, "/mcp/globex", await token(stack, "alice", "acme"))
    assert status == 401
    assert "token is for tenant 'acme'" in body and "globex" in body
    status, _, body = await refusal(stack, "/mcp/globex/research", await token(stack, "alice", "acme"))
    assert status == 401


async def test_a_forged_token_and_garbage_are_refused(stack: Stack) -> None:
    real = await token(stack)
    header, payload, signature = real.split(".")
    forged = f"{header}.{payload}.{signature[::-1]}"
    status, _, body = await refusal(stack, "/mcp/acme", forged)
    assert status == 401 and "signature" in body
    status, _, body = await refusal(stack, "/mcp/acme", "not-a-jwt")
    assert status == 401 and "not a well-formed JWT" in body


async def test_an_unknown_tenant_or_malformed_path_is_not_found(stack: Stack) -> None:
    for path in ("/mcp/nosuch", "/mcp/acme/x/y", "/mcp/ACME"):
        status, _, _ = await refusal(stack, path, await token(stack))
        assert status == 404, path


async def test_identity_down_is_503_try_again_not_a_bad_token(stack: Stack, fresh_nats, tmp_path: Path) -> None:
    """An endpoint whose bus has no identity: the client is told to retry, not that its token is bad."""
    lonely = await EventConnection.connect(BusSettings(nats_url=fresh_nats.url), "mcp-endpoint-alone")
    port = free_port()
    endpoint = McpEndpoint(EndpointConfig(f"http://127.0.0.1:{port}", lambda tenant: stack.issuer_url),
                           GrantDesk(ask_identity(lonely, timeout_s=1.0), ReloadingKeyring(tmp_path)),
                           mcp_server(stack.mcp.gateway.tools_for,
                                      GovernedCalls(lonely.publish, closer(CallClaims(lonely.js)))))
    await endpoint.start("127.0.0.1", port)
    try:
        async with httpx.AsyncClient() as http:
            response = await http.post(f"http://127.0.0.1:{port}/mcp/acme",
                                       json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                                       headers={"Authorization": f"Bearer {await token(stack)}",
                                                "Accept": "application/json, text/event-stream"})
        assert response.status_code == 503 and response.headers["retry-after"] == "5"
        assert response.json()["error_description"] == "identity did not answer"
    finally:
        await endpoint.stop()
        await lonely.close()


async def test_no_token_is_ever_stored_on_the_bus(stack: Stack) -> None:
    """Refusals are audited (error events in the tenant's chain) but neither they nor grant requests keep a token."""
    tokens = [await token(stack, audience=None), await token(stack, "bob"), "eyJhbGciOiJFUzI1NiJ9.e30.c2ln"]
    for bearer in tokens:
        await refusal(stack, "/mcp/acme", bearer)
        await refusal(stack, "/mcp/globex", bearer)
    info = await stack.bus.js.stream_info("CADUCEUS")
    stored = [await stack.bus.js.get_msg("CADUCEUS", seq)
              for seq in range(info.state.first_seq, info.state.last_seq + 1)]
    refusals = [m for m in stored if m.subject.startswith("cad.v1.error.") and b"mcp access refused" in m.data]
    assert refusals, "refusals are audited"
    for bearer in tokens:
        for message in stored:
            assert bearer.encode() not in (message.data or b""), message.subject
            signature = bearer.split(".")[-1]
            assert len(signature) < 40 or signature.encode() not in (message.data or b"")


async def test_the_cli_mints_a_token_for_the_mcp_audience(stack: Stack) -> None:
    minted = await asyncio.to_thread(subprocess.run, [
        str(Path(sys.executable).with_name("caduceus")), "identity", "token", "--tenant", "acme", "--user", "alice",
        "--audience", "caduceus-mcp", "--issuer-url", stack.issuer_url], capture_output=True, text=True, timeout=60)
    assert minted.returncode == 0, minted.stderr
    async with client(f"{stack.url}/mcp/acme", minted.stdout.strip().splitlines()[-1]) as mcp:
        assert (await mcp.list_tools()).tools == []
