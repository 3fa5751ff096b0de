"""Benchmark: a stdio MCP server's call at the gateway with its session kept (upstream.SessionPool) against a
session per call (what the gateway did before: start the server in its bubblewrap sandbox, the SDK's handshake,
list, call, stop), same run, same server, same checks.

Both paths call `McpGateway.call` on a dispatched call signed by policy for a pinned tool, so each includes the
gateway's own work (signature, single use, listing the tools in the session and checking the pin, the call,
redaction). The per-call baseline uses a pool that forgets every session after each call.

    .venv/bin/python bench/mcp_stdio_sessions.py [--calls N] [--no-sandbox]

Writes bench/results/mcp-stdio-sessions-<date>.md and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from governed_roundtrip import machine, percentile

from caduceus_contracts import (
    Decision,
    Keyring,
    McpFactsQuery,
    RiskyFact,
    SignedDecision,
    Signer,
    ToolCallDispatched,
    call_digest,
    utcnow,
)
from caduceus_mcp import DEFINITION_FACT, McpGateway
from caduceus_mcp.egress import UpstreamEgress
from caduceus_mcp.gateway import RegistryFile
from caduceus_mcp.pins import PinStore
from caduceus_mcp.sandbox import StdioSandbox
from caduceus_mcp.upstream import SecretStore, SessionPool, plain_launcher
from caduceus_sandbox import PolicyFiles

RESULTS = Path(__file__).parent / "results"
UPSTREAM = '''
from mcp.server.mcpserver import MCPServer
server = MCPServer("bench-stdio")

@server.tool(description="Echo text back.")
def echo(text: str) -> str:
    return text

server.run("stdio")
'''


class PerCall(SessionPool):
    """The baseline: every session is closed as soon as its call is done."""

    async def _live_for(self, upstream):
        await self.close_all()
        return await super()._live_for(upstream)


def dispatched(signer: Signer, text: str, definition: str | None = None) -> ToolCallDispatched:
    tool, args = "mcp__bench__echo", {"text": text}
    call_id = f"c-{os.urandom(6).hex()}"
    decision = Decision(
        tenant="acme", workspace="default", session_id="s-bench", call_id=call_id, tool=tool,
        digest=call_digest(tenant="acme", workspace="default", session="s-bench", tool=tool, args=args),
        verdict="allow", reason="approved by carol" if definition else "allowed",
        facts=(RiskyFact(name=DEFINITION_FACT, value=definition),) if definition else (),
        expires_at=utcnow() + timedelta(minutes=5))
    return ToolCallDispatched(tenant="acme", call_id=call_id, workspace="default", session_id="s-bench", tool=tool,
                              args=args, decision=SignedDecision.issue(signer, decision))


async def timed(gateway: McpGateway, signer: Signer, calls: int) -> list[float]:
    took = []
    for n in range(calls):
        started = time.perf_counter()
        done = await gateway.call(dispatched(signer, f"call {n}"))
        took.append((time.perf_counter() - started) * 1000)
        assert done.status == "ok", done.reason
    return took


async def run(calls: int, sandbox: bool) -> str:
    root = Path(tempfile.mkdtemp(prefix="mcp-stdio-bench-"))
    (root / "upstream").mkdir()
    (root / "upstream" / "server.py").write_text(UPSTREAM)
    (root / "mcp.yaml").write_text("tenants:\n  acme:\n    servers:\n      bench:\n"
                                   f"        command: [{sys.executable}, {root / 'upstream' / 'server.py'}]\n")
    policy, approval = Signer.generate("policy"), Signer.generate("approval")
    keyring = Keyring()
    for signer in (policy, approval):
        keyring.trust(signer.issuer, signer.private_key.public_key())
    policies = PolicyFiles(None, root / "sandboxes")
    launcher = StdioSandbox(policies) if sandbox else plain_launcher

    async def publish(subject, event):
        return None

    def gateway(pool: SessionPool) -> McpGateway:
        return McpGateway(RegistryFile(root / "mcp.yaml"), PinStore(f"sqlite:///{root / 'pins.db'}"),
                          SecretStore(root / "secrets"), keyring, publish=publish, launcher=launcher,
                          list_timeout_s=30, egress=UpstreamEgress(policies), sessions=pool)

    kept, per_call = gateway(SessionPool()), gateway(PerCall())
    facts = await kept.facts(McpFactsQuery(tenant="acme", workspace="default", tool="mcp__bench__echo"))
    first = await kept.call(dispatched(approval, "first use", facts.digest))  # approved once: pins it
    assert first.status == "ok", first.reason
    timings: dict[str, list[float]] = {"kept": [], "per-call": []}
    block = max(1, calls // 5)
    while len(timings["kept"]) < calls:  # alternate blocks so both see the same machine load
        for name, gw in (("per-call", per_call), ("kept", kept)):
            timings[name] += await timed(gw, policy, min(block, calls - len(timings[name])))
    await kept.sessions.close_all()
    await per_call.sessions.close_all()

    rows = []
    for name, label in (("per-call", "a session per call (before)"), ("kept", "session kept (SessionPool)")):
        took = sorted(timings[name])
        rows.append(f"| {label} | {percentile(took, 0.5):.1f} | {percentile(took, 0.99):.1f} | "
                    f"{1000 * len(took) / sum(took):.1f} |")
    ratio = percentile(timings["per-call"], 0.5) / percentile(timings["kept"], 0.5)
    return "\n".join([
        "# MCP stdio server: session kept between calls against a session per call, same run",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- command: `bench/mcp_stdio_sessions.py --calls {calls}{'' if sandbox else ' --no-sandbox'}`",
        f"- server: an `mcp` SDK server over stdio, {'in bubblewrap (the gateway default)' if sandbox else 'unsandboxed'}; "
        f"{calls} calls per path, one at a time, alternating blocks of {block}",
        "",
        "| path | p50 ms | p99 ms | calls/s |",
        "|---|---|---|---|",
        *rows,
        "",
        f"A kept session makes the p50 call {ratio:.0f}x faster. Both paths do the gateway's whole check per call "
        "(decision signature and single use, the tools listed in the call's own session, the pin, redaction); the "
        "difference is starting the server and the SDK's handshake.",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50, help="calls per path (default 50)")
    parser.add_argument("--no-sandbox", action="store_true", help="run the server without bubblewrap")
    options = parser.parse_args()
    report = asyncio.run(run(options.calls, not options.no_sandbox))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"mcp-stdio-sessions-{datetime.now(UTC):%Y-%m-%d}.md"
    out.write_text(report)
    print(report)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
