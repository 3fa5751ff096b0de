"""Benchmark: what governing an MCP call costs. The same upstream tool, called with the `mcp` SDK's own client:

- direct: the client talks to the upstream MCP server (streamable HTTP) itself: no identity, no policy, no audit;
- governed: the client talks to the gateway's MCP endpoint (`/mcp/acme`, the token of carol, an admin), and each call is a
  governed call: identity's grant (cached per token), a `tool.requested` event, policy's signed decision, the
  broker's dispatch, the gateway's check of the decision and of the pinned definition, the upstream call, the
  `tool.completed` event, every event stored for the audit trail.

Both on the whole embedded stack started here, in the same run, alternating blocks of calls so both see the same
machine load. The tool's first use is approved once (by dan, a second admin, through the approvals API) before
timing; every timed call runs without asking.

    .venv/bin/python bench/mcp_gateway_overhead.py [--calls N] [--block B]

Writes bench/results/mcp-gateway-overhead-<date>.md and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from governed_roundtrip import machine, percentile

RESULTS = Path(__file__).parent / "results"
UPSTREAM = '''
import sys
from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations
server = MCPServer("bench-upstream")

@server.tool(description="Echo text back.", annotations=ToolAnnotations(read_only_hint=True))
def echo(text: str) -> str:
    return text

import uvicorn
uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
'''


def client(url: str, token: str | None = None):
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return Client(streamable_http_client(url, http_client=httpx2.AsyncClient(headers=headers, timeout=60)),
                  mode="legacy", cache=None)


async def approve_first_use(stack, endpoint: str, token: str) -> None:
    """Ask once (it waits for approval), let carol approve through the approvals API, then ask until it runs."""
    from caduceus_client import ApprovalsClient
    from caduceus_identity.devtoken import mint_dev_token

    async with client(endpoint, token) as mcp:
        first = await mcp.call_tool("mcp__bench__echo", {"text": "warm"})
        text = first.content[0].text
        if first.is_error and text.startswith("waiting for approval"):
            dan = mint_dev_token(stack.info.dev_issuer_url, "acme", "dan")
            async with ApprovalsClient(stack.info.approval_ui_url, dan) as approvals:
                view = await approvals.wait_for(lambda v: v.tool == "mcp__bench__echo", timeout_s=30)
                await approvals.answer(view.call_id, "approve", digest=view.digest)
            again = await mcp.call_tool("mcp__bench__echo", {"text": "warm"})
            if again.is_error:
                raise RuntimeError(f"the approved call did not run: {again.content[0].text}")
        elif first.is_error:
            raise RuntimeError(f"the first governed call failed: {text}")


class BusClock:
    """When each governed call was requested, decided and completed on the bus (this process's clock)."""

    def __init__(self) -> None:
        self.seen: dict[str, dict[str, float]] = {}

    async def on_msg(self, msg) -> None:
        import json

        body = json.loads(msg.data)
        kind = body.get("kind", "")
        if kind in ("tool.requested", "tool.decided", "tool.completed"):
            self.seen.setdefault(body["call_id"], {}).setdefault(kind, time.perf_counter())

    def spans(self) -> tuple[list[float], list[float]]:
        """(requested to decided: policy; decided to completed: broker, gateway and upstream) per complete call."""
        full = [t for t in self.seen.values() if len(t) == 3]
        return ([t["tool.decided"] - t["tool.requested"] for t in full],
                [t["tool.completed"] - t["tool.decided"] for t in full])


async def timed(url: str, token: str | None, tool: str, calls: int, clock_bus=None) -> list[float]:
    samples = []
    async with client(url, token) as mcp:
        for i in range(calls):
            started = time.perf_counter()
            result = await mcp.call_tool(tool, {"text": f"bench {i}"})
            samples.append(time.perf_counter() - started)
            if result.is_error or result.content[0].text != f"bench {i}":
                raise RuntimeError(f"{tool} failed: {result.content[0].text}")
    return samples


async def run_paths(stack, upstream_url: str, endpoint: str, token: str, options) -> tuple:
    from caduceus_bus import EventConnection

    clock = BusClock()
    bus = await EventConnection.connect(stack.bus_settings("client"), "bench-mcp-clock")
    await bus.subscribe("cad.v1.tool.>", clock.on_msg)
    direct: list[float] = []
    governed: list[float] = []
    walls = {"direct": 0.0, "governed": 0.0}
    await timed(upstream_url, None, "echo", 20)  # warm both paths
    await timed(endpoint, token, "mcp__bench__echo", 20)
    clock.seen.clear()
    done = 0
    while done < options.calls:
        n = min(options.block, options.calls - done)
        for name, url, auth, tool, into in (("direct", upstream_url, None, "echo", direct),
                                            ("governed", endpoint, token, "mcp__bench__echo", governed)):
            started = time.perf_counter()
            into += await timed(url, auth, tool, n)
            walls[name] += time.perf_counter() - started
        done += n
    await bus.close()
    return direct, governed, walls, clock


def row(name: str, samples: list[float], wall: float) -> str:
    return (f"| {name} | {statistics.median(samples) * 1e3:.1f} | {percentile(samples, 0.99) * 1e3:.1f} | "
            f"{len(samples) / wall:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per path (default 300)")
    parser.add_argument("--block", type=int, default=50, help="calls per alternating block (default 50)")
    options = parser.parse_args()

    from caduceus_embedded.ports import StackPorts, free_port, wait_for_port
    from caduceus_embedded.stack import EmbeddedStack
    from caduceus_identity.devtoken import mint_dev_token

    port = free_port()
    upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(port)])
    state = Path(tempfile.mkdtemp(prefix="bench-mcp-"))
    stack = EmbeddedStack(state, StackPorts.free(), on_progress=lambda line: print(f"  {line}", file=sys.stderr))
    try:
        if not wait_for_port(port, 30):
            raise RuntimeError("the upstream MCP server did not start")
        upstream_url = f"http://127.0.0.1:{port}/mcp"
        stack.start()
        # carol (an admin: acme's policy lets only admins use MCP tools) calls; dan, another admin, approves.
        tenants = yaml.safe_load(stack.layout.tenants_file.read_text())
        tenants["tenants"]["acme"]["users"]["dan"] = {"email": "dan@acme.example", "roles": ["admin"]}
        stack.layout.tenants_file.write_text(yaml.safe_dump(tenants))
        # acme's egress rules let the gateway reach the upstream on loopback (HTTP upstreams go through them).
        (state / "sandboxes").mkdir(exist_ok=True)
        (state / "sandboxes" / "acme.yaml").write_text(
            f"version: 1\nnetwork:\n  egress: allowlist\n  allow: [{{host: 127.0.0.1, ports: [{port}]}}]\n"
            "  allow_addresses: [127.0.0.1/32]\n")
        (state / "mcp.yaml").write_text(
            "tenants:\n  acme:\n    servers:\n      bench:\n        scope: tenant\n"
            f"        url: {upstream_url}\n        approvers: admin\n")
        endpoint = f"http://127.0.0.1:{stack.ports.mcp_endpoint}/mcp/acme"
        token = mint_dev_token(stack.info.dev_issuer_url, "acme", "carol", audience="caduceus-mcp")
        time.sleep(2)  # the gateway reloads its registry within a second
        asyncio.run(approve_first_use(stack, endpoint, token))

        direct, governed, walls, clock = asyncio.run(run_paths(stack, upstream_url, endpoint, token, options))
    finally:
        stack.stop()
        upstream.terminate()
        upstream.wait(10)

    now = datetime.now(UTC)
    deciding, running = clock.spans()
    ratio = statistics.median(governed) / statistics.median(direct)
    report = "\n".join([
        "# MCP gateway overhead: a governed call through the MCP endpoint against the same upstream called "
        "directly, same run",
        "",
        f"- date: {now:%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- command: `bench/mcp_gateway_overhead.py --calls {options.calls} --block {options.block}`",
        f"- calls per path: {options.calls}, one at a time, alternating in blocks of {options.block} (one SDK client "
        "session per block, protocol 2025-11-25)",
        "",
        "| path | p50 ms | p99 ms | calls/s |",
        "|---|---|---|---|",
        row("direct (SDK client to the upstream)", direct, walls["direct"]),
        row("governed (SDK client to the gateway's endpoint)", governed, walls["governed"]),
        "",
        f"Where a governed call's time goes (p50 over {len(deciding)} calls, seen on the bus): requested to decided "
        f"(policy, including its request for the tool's facts to the gateway) "
        f"{statistics.median(deciding) * 1e3:.1f} ms; decided to completed (the broker's dispatch, the gateway's "
        f"checks and its call to the upstream) {statistics.median(running) * 1e3:.1f} ms; the rest is the "
        "endpoint (HTTP, the grant, waiting for the events) and the client.",
        "",
        f"Governed p50 is {ratio:.1f}x direct ({(statistics.median(governed) - statistics.median(direct)) * 1e3:.1f} "
        "ms more per call). The governed path adds, per call: the grant lookup (cached per token), the "
        "`tool.requested` event (stored), policy's decision (facts from the gateway, Cedar, signing), the broker's "
        "dispatch, the gateway's checks (signature, single use, pinned definition) and its call to the upstream, "
        "and the `tool.completed` event. Calls/s is one caller at a time, so it is the inverse of the mean "
        "latency; other processes may have shared the machine (both paths alternate so they see the same load).",
        "",
    ])
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"mcp-gateway-overhead-{now:%Y-%m-%d}.md"
    out.write_text(report)
    print(report)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
