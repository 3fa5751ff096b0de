"""A gateway wired to real MCP servers (tests/upstreams.py, built with the SDK) and signed decisions."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import nats
import pytest

from caduceus_bus import CallClaims, ensure_used_decisions
from caduceus_contracts import (
    Decision,
    Keyring,
    RiskyFact,
    SessionGrant,
    SignedDecision,
    SignedGrant,
    Signer,
    ToolCallDispatched,
    call_digest,
    utcnow,
)
from caduceus_embedded.ports import free_port, wait_for_port
from caduceus_mcp import DEFINITION_FACT, McpGateway, PinStore, RegistryFile, SecretStore, UpstreamEgress
from caduceus_sandbox import PolicyFiles

UPSTREAMS = Path(__file__).with_name("upstreams.py")
TOKEN = "tok-3f9a61c2e8d54b7a"


@dataclass
class Keys:
    identity: Signer
    policy: Signer
    approval: Signer
    keyring: Keyring


@pytest.fixture(scope="session")
def keys() -> Keys:
    ring = Keyring()
    signers = {name: Signer.generate(name) for name in ("identity", "policy", "approval")}
    for name, signer in signers.items():
        ring.trust(name, signer.private_key.public_key())
    return Keys(keyring=ring, **signers)


def write_registry(path: Path, servers: str) -> None:
    path.write_text("tenants:\n  acme:\n    servers:\n" + servers)


def stdio_server(name: str, rug: Path, extra: str = "", scope: str = "tenant") -> str:
    return (f"      {name}:\n        scope: {scope}\n"
            f"        command: [{sys.executable}, {UPSTREAMS}, stdio]\n"
            f"        env: {{MCP_TEST_RUG: {rug}}}\n"
            f"        approvers: admin\n"
            f"        credentials: {{env: {{MCP_TEST_TOKEN: upstream-token}}}}\n{extra}")


@pytest.fixture()
async def gateway(tmp_path: Path, keys: Keys, nats_server):
    """The gateway, its calls taken in the ledger of calls on a real nats-server (as the broker creates it)."""
    registry = tmp_path / "mcp.yaml"
    write_registry(registry, stdio_server("files", tmp_path / "rug", "        timeout_s: 3\n"))
    secrets = SecretStore(tmp_path / "mcp-secrets")
    secrets.write("acme", "upstream-token", TOKEN)
    published = []

    async def publish(subject, event):
        published.append((subject, event))

    gw = McpGateway(RegistryFile(registry), PinStore(f"sqlite:///{tmp_path / 'pins.db'}"), secrets, keys.keyring,
                    publish=publish, list_timeout_s=20, max_result_bytes=5000,
                    egress=UpstreamEgress(PolicyFiles(None, tmp_path / "sandboxes")))
    gw.published = published  # type: ignore[attr-defined]
    nc = await nats.connect(nats_server.url)
    await ensure_used_decisions(nc.jetstream())
    gw.calls = CallClaims(nc.jetstream())
    yield gw
    await gw.sessions.close_all()  # its stdio servers stay up between calls: stop them
    await nc.close()


def grant(keys: Keys, roles: tuple[str, ...] = ("member",), workspace: str = "default") -> SignedGrant:
    now = utcnow()
    return SignedGrant.issue(keys.identity, SessionGrant(
        tenant="acme", workspace=workspace, user="alice", roles=roles, channel="cli", session_id="s-1",
        issued_at=now, expires_at=now + timedelta(minutes=5)))


def dispatched(keys: Keys, tool: str, args: dict, *, signer: Signer | None = None, verdict: str = "allow",
               definition_digest: str | None = None, ttl_s: float = 60, call_id: str | None = None,
               workspace: str = "default") -> ToolCallDispatched:
    call_id = call_id or f"c-{os.urandom(4).hex()}"
    digest = call_digest(tenant="acme", workspace=workspace, session="s-1", tool=tool, args=args)
    facts = (RiskyFact(name=DEFINITION_FACT, value=definition_digest),) if definition_digest else ()
    decision = Decision(tenant="acme", workspace=workspace, session_id="s-1", call_id=call_id, tool=tool,
                        digest=digest, verdict=verdict, reason="approved by carol" if signer else "allowed",
                        facts=facts, expires_at=utcnow() + timedelta(seconds=ttl_s))
    return ToolCallDispatched(tenant="acme", call_id=call_id, workspace=workspace, session_id="s-1", tool=tool,
                              args=args, decision=SignedDecision.issue(signer or keys.policy, decision))


def allow_egress(tmp_path: Path, rules: str, addresses: str = "[127.0.0.1/32]") -> None:
    """acme's egress rules (its sandbox policy), which HTTP upstreams are reached through."""
    (tmp_path / "sandboxes").mkdir(exist_ok=True)
    (tmp_path / "sandboxes" / "acme.yaml").write_text(
        f"version: 1\nnetwork:\n  egress: allowlist\n  allow: {rules}\n  allow_addresses: {addresses}\n")


@pytest.fixture()
def http_upstream(tmp_path: Path):
    """The same server over streamable HTTP, requiring the bearer token; acme's egress rules allow it."""
    port = free_port()
    allow_egress(tmp_path, f"[{{host: 127.0.0.1, ports: [{port}]}}]")
    log = (tmp_path / "http-upstream.log").open("w")
    process = subprocess.Popen([sys.executable, str(UPSTREAMS), "http", str(port)], stdout=log, stderr=log,
                               env={**os.environ, "MCP_TEST_TOKEN": TOKEN})
    processes[tmp_path] = process
    try:
        assert wait_for_port(port, 20), (tmp_path / "http-upstream.log").read_text()
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(10)


processes: dict[Path, subprocess.Popen] = {}


@pytest.fixture()
def http_process(http_upstream, tmp_path: Path) -> subprocess.Popen:
    """The process serving `http_upstream` (to kill it)."""
    return processes[tmp_path]
