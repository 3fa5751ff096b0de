"""Upstream MCP credentials never leave the gateway (issue 14 item 5), attacked on the whole embedded stack.

acme registers two upstreams with credentials set through `caduceus mcp secrets set`: `vault`, a streamable HTTP
server (SDK) that wants a bearer token, and `envy`, a stdio server (SDK, in bubblewrap) given its token in its
environment. Both are hostile: they echo their token and the headers they were sent in results and in error
results. carol then makes governed calls through the MCP endpoint (policy, approval by dan, broker, gateway,
audit), and every byte the stack stored or published is searched for the two credential values: every message of
every JetStream stream (the event stream, the KV buckets) read raw with its headers, every file under the state
dir except the secret store itself (the JetStream store, the audit database, the pins database, Temporal's
database, the planner's and executor's homes, every service's log), every SIEM export, and what carol's client got.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from typer.testing import CliRunner

from caduceus.cli import app
from caduceus_audit import AuditStore
from caduceus_bus import EventConnection
from caduceus_client import ApprovalsClient
from caduceus_embedded.ports import free_port, wait_for_port
from caduceus_embedded.stack import EmbeddedStack
from caduceus_identity.devtoken import mint_dev_token

pytestmark = pytest.mark.timeout(420)
UPSTREAMS = Path(__file__).parents[1] / "services" / "mcp" / "tests" / "upstreams.py"
HTTP_TOKEN = "vault-bearer-" + os.urandom(12).hex()
STDIO_TOKEN = "envy-env-" + os.urandom(12).hex()
SECRETS = (HTTP_TOKEN, STDIO_TOKEN)
# Fail-closed answers of a machine too loaded to decide in time (nothing ran): the call is asked again.
SLOW = ("cannot vouch", "policy did not decide within")
# The calls carol makes: every one echoes the server's credential back, as a result or as an error result.
# `confide` names the credential in its description (which approvers are shown and the audit keeps), `refuse` in a
# protocol error.
CALLS = ("mcp__vault__whoami", "mcp__vault__headers", "mcp__vault__leak", "mcp__vault__confide", "mcp__envy__whoami",
         "mcp__envy__leak", "mcp__envy__refuse")


def cli(*args: str, stdin: str | None = None) -> str:
    result = CliRunner().invoke(app, list(args), input=stdin, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def forms(secret: str) -> list[bytes]:
    """The value as stored plainly, and base64-encoded (a header or a blob may carry it so)."""
    raw = secret.encode()
    return [raw, base64.b64encode(raw), base64.b64encode(b"Bearer " + raw)]


def leaks(data: bytes) -> list[str]:
    return [secret for secret in SECRETS if any(form in data for form in forms(secret))]


@pytest.fixture(scope="module")
def endpoint(stack: EmbeddedStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """acme's two credentialed upstreams, registered and given their secrets with the CLI; dan, a second admin."""
    import yaml

    state = str(stack.layout.root)
    port = free_port()
    log = (tmp_path_factory.mktemp("vault") / "vault.log").open("w")
    env = {k: v for k, v in os.environ.items() if k != "MCP_TEST_RUG"}
    vault = subprocess.Popen([sys.executable, str(UPSTREAMS), "http", str(port)], stdout=log, stderr=log,
                             env={**env, "MCP_TEST_TOKEN": HTTP_TOKEN})
    tenants = yaml.safe_load(stack.layout.tenants_file.read_text())
    tenants["tenants"]["acme"]["users"]["dan"] = {"email": "dan@acme.example", "roles": ["admin"]}
    stack.layout.tenants_file.write_text(yaml.safe_dump(tenants))
    # acme's egress rules let the gateway reach the vault on loopback (and nothing else).
    sandboxes = stack.layout.root / "sandboxes"
    sandboxes.mkdir(exist_ok=True)
    egress = sandboxes / "acme.yaml"
    egress.write_text(f"version: 1\nnetwork:\n  egress: allowlist\n  allow: [{{host: 127.0.0.1, ports: [{port}]}}]\n"
                      "  allow_addresses: [127.0.0.1/32]\n")
    try:
        assert wait_for_port(port, 30)
        outputs = [
            cli("mcp", "secrets", "set", "acme", "vault-token", "--state-dir", state, stdin=HTTP_TOKEN + "\n"),
            cli("mcp", "secrets", "set", "acme", "envy-token", "--state-dir", state, "--json", stdin=STDIO_TOKEN),
            cli("mcp", "servers", "add", "acme", "vault", "--url", f"http://127.0.0.1:{port}/mcp",
                "--header-secret", "Authorization=Bearer {vault-token}", "--state-dir", state),
            cli("mcp", "servers", "add", "acme", "envy", "--command", f"{sys.executable} {UPSTREAMS} stdio",
                "--env-secret", "MCP_TEST_TOKEN=envy-token", "--state-dir", state, "--json"),
            cli("mcp", "servers", "show", "acme", "vault", "--state-dir", state, "--json"),
            cli("mcp", "servers", "list", "--state-dir", state),
        ]
        assert not leaks("\n".join(outputs).encode()), "the CLI printed a credential"
        yield f"http://127.0.0.1:{stack.ports.mcp_endpoint}/mcp/acme"
    finally:
        vault.terminate()
        vault.wait(10)
        egress.unlink(missing_ok=True)


def client(url: str, bearer: str) -> Client:
    return Client(streamable_http_client(url, http_client=httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {bearer}"}, timeout=90)), cache=None)


async def listed(url: str, bearer: str, names: set[str], timeout_s: float = 60.0) -> set[str]:
    """The gateway reloads its registry within a second and starts the upstreams on first use."""
    async with asyncio.timeout(timeout_s):
        while True:
            async with client(url, bearer) as mcp:
                found = {tool.name for tool in (await mcp.list_tools()).tools}
            if names <= found:
                return found
            await asyncio.sleep(0.5)


async def first_use(stack: EmbeddedStack, url: str, carol: str, tool: str) -> object:
    """carol's call waits for approval; dan approves it, and the same call returns its result."""

    async def dan_approves() -> None:
        async with ApprovalsClient(stack.info.approval_ui_url,
                                   mint_dev_token(stack.info.dev_issuer_url, "acme", "dan")) as approvals:
            view = await approvals.wait_for(lambda v: v.tool == tool, timeout_s=90)
            await approvals.answer(view.call_id, "approve", digest=view.digest)

    async with client(url, carol) as mcp:
        call = asyncio.ensure_future(mcp.call_tool(tool, {}))
        approval = asyncio.ensure_future(dan_approves())
        await asyncio.wait({call, approval}, return_when=asyncio.FIRST_COMPLETED)
        if call.done() and not approval.done():
            approval.cancel()
            return call.result()  # answered without an approval: the assertions say what it was
        await approval
        result = await call
        while result.is_error and result.content[0].text.startswith("waiting for approval"):
            result = await mcp.call_tool(tool, {})
        return result


async def raw_stream_bytes(stack: EmbeddedStack) -> dict[str, bytes]:
    """Every stored message of every stream (events, KV buckets, object stores), subject + headers + data."""
    connection = await EventConnection.connect(stack.bus_settings("operator"), "leak-hunt", role="operator")
    found: dict[str, bytes] = {}
    try:
        for info in await connection.js.streams_info():
            name, state = info.config.name, info.state
            chunks = []
            for seq in range(state.first_seq, state.last_seq + 1):
                try:
                    msg = await connection.js.get_msg(name, seq)
                except Exception:  # a deleted message (KV history, limits): nothing stored to leak
                    continue
                chunks.append((msg.subject or "").encode() + repr(msg.headers).encode() + (msg.data or b""))
            found[name] = b"\n".join(chunks)
    finally:
        await connection.nc.close()
    return found


def stored_files(root: Path, secret_store: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_relative_to(secret_store):
            yield path


def audited_calls(state: Path, calls: int, timeout_s: float = 60.0) -> list:
    """The audit chain once it holds an outcome for every call made."""
    store = AuditStore(f"sqlite:///{state}/audit.db")
    try:
        until = time.monotonic() + timeout_s
        while True:
            records = [r for r in store.records("acme") if r.kind == "tool.completed" and "mcp-gateway" in r.body]
            if len(records) >= calls or time.monotonic() > until:
                return store.records("acme")
            time.sleep(0.5)
    finally:
        store.close()


async def test_upstream_credentials_never_reach_the_bus_the_audit_the_state_dir_the_logs_or_the_agent(
        stack: EmbeddedStack, endpoint: str) -> None:
    carol = mint_dev_token(stack.info.dev_issuer_url, "acme", "carol", audience="caduceus-mcp")
    await listed(endpoint, carol, set(CALLS))

    answers = []
    for tool in CALLS:
        for _attempt in range(3):
            result = await first_use(stack, endpoint, carol, tool)
            # On a loaded machine a sandboxed stdio server can take longer to start than policy waits for the
            # gateway's facts, or the endpoint for policy: that call is denied (fail closed), nothing ran; ask again.
            if not any(slow in result.content[0].text for slow in SLOW):
                break
        answers.append((tool, result.is_error, result.content[0].text))
    logs = "\n".join(stack.layout.log(name).read_text()[-3000:] for name in ("mcp", "policy"))
    # The upstreams did get their credentials (they answered, and echoed them), and the agent saw them redacted.
    by_tool = {tool: (is_error, text) for tool, is_error, text in answers}
    assert not any(slow in text for _, _, text in answers for slow in SLOW), f"{answers}\n{logs}"
    assert by_tool["mcp__vault__whoami"] == (False, "my token is [REDACTED:credential]")
    assert by_tool["mcp__envy__whoami"] == (False, "my token is [REDACTED:credential]")
    assert "[REDACTED:credential]" in by_tool["mcp__vault__headers"][1]
    # The error results (which the upstreams filled with their credentials) come back as errors.
    assert by_tool["mcp__vault__leak"][0] and by_tool["mcp__vault__leak"][1].startswith(
        "error: MCP server vault reported an error: refused with token [REDACTED:credential] and headers")
    assert by_tool["mcp__vault__leak"][1].count("[REDACTED:credential]") == 2  # the env token and the header
    assert by_tool["mcp__envy__leak"] == (
        True, "error: MCP server envy reported an error: refused with token [REDACTED:credential] and headers {}")
    assert by_tool["mcp__vault__confide"] == (False, "nothing more to say")
    assert by_tool["mcp__envy__refuse"][0] and "[REDACTED:credential]" in by_tool["mcp__envy__refuse"][1]
    assert not leaks(repr(answers).encode()), "a credential reached the MCP client"
    async with client(endpoint, carol) as mcp:
        described = {tool.name: tool.description for tool in (await mcp.list_tools()).tools}
    assert described["mcp__vault__confide"].startswith("Configured with token [REDACTED:credential]")
    assert not leaks(repr(described).encode()), "a credential reached the tool list"

    root = stack.layout.root
    records = await asyncio.to_thread(audited_calls, root, len(CALLS))
    assert sum(1 for r in records if r.kind == "tool.completed" and "mcp-gateway" in r.body) >= len(CALLS)

    found = []
    for stream, data in (await raw_stream_bytes(stack)).items():
        found += [f"stream {stream}: {secret[:6]}..." for secret in leaks(data)]
    for export in ("jsonl", "ocsf", "cef", "syslog"):
        output = cli("audit", "export", "--format", export, "--tenant", "acme", "--state-dir", str(root))
        assert "vault" in output, f"the {export} export holds no MCP call"
        found += [f"audit export {export}" for _ in leaks(output.encode())]
    secret_store = root / "mcp-secrets"
    assert {p.read_text().strip() for p in secret_store.rglob("*") if p.is_file()} >= set(SECRETS)
    searched = 0
    for path in await asyncio.to_thread(lambda: list(stored_files(root, secret_store))):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        searched += 1
        found += [f"{path.relative_to(root)}" for _ in leaks(data)]
    assert searched > 20  # the JetStream store, the databases, the logs, the workers' homes were all there
    assert found == [], f"credentials found in: {found}"
