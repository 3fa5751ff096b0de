"""Benchmark: the governed round trip of a cheap tool call vs Hermes dispatching it in-process.

Governed: the planner's gateway publishes the call, policy decides and signs,
the broker dispatches, the executor verifies and runs Hermes's `read_file` on a
tiny file in the workspace, and the result comes back: what every tool call of
a Caduceus turn pays. Baseline: `model_tools.handle_function_call` for the same
call in this process (no plugin), in the same run.

    python3 dev.py bench            # or: .venv/bin/python bench/governed_roundtrip.py
    --calls N   calls per concurrency level (default 400)

Writes bench/results/governed-roundtrip-<date>.md and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
LEVELS = (1, 8, 64)
TOOL, FILE = "read_file", "bench-note.txt"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(call, calls: int, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def one(_: int) -> None:
        start = time.perf_counter()
        call()
        elapsed = time.perf_counter() - start
        with lock:
            latencies.append(elapsed)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(calls)))
    wall = time.perf_counter() - started
    return {"p50_ms": statistics.median(latencies) * 1e3, "p99_ms": percentile(latencies, 0.99) * 1e3,
            "calls_per_s": calls / wall}


def run_baseline(workspace: Path, calls: int) -> dict[int, dict[str, float]]:
    """Hermes's own dispatch of the same call, in a fresh interpreter with no plugin enabled."""
    code = f"""
import json, os, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from governed_roundtrip import measure, LEVELS, TOOL, FILE
os.chdir({str(workspace)!r})
from model_tools import handle_function_call
args = {{"path": FILE}}
assert "bench" in handle_function_call(TOOL, args)
print(json.dumps({{n: measure(lambda: handle_function_call(TOOL, args), {calls}, n) for n in LEVELS}}))
"""
    home = tempfile.mkdtemp(prefix="bench-hermes-")
    env = {**os.environ, "HERMES_HOME": home, "TERMINAL_CWD": str(workspace)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    import json

    return {int(k): v for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def run_governed(calls: int) -> tuple[dict[int, dict[str, float]], Path]:
    from caduceus_bus import EventConnection
    from caduceus_contracts import (
        SessionGrant,
        SignedGrant,
        ensure_signer,
        load_keyring,
        utcnow,
    )
    from caduceus_embedded.ports import StackPorts
    from caduceus_embedded.stack import EmbeddedStack
    from caduceus_hermes_plugin import GatewayTimeouts, ToolGateway
    from caduceus_identity.devtoken import mint_dev_token

    state = Path(tempfile.mkdtemp(prefix="bench-stack-"))
    stack = EmbeddedStack(state, StackPorts.free(), on_progress=lambda line: print(f"  {line}", file=sys.stderr))
    stack.start()
    try:
        workspace = stack.layout.workspaces / "acme" / "default"
        # One real turn starts the acme/default worker pair (planner and executor), as in production.
        asyncio.run(_warm_up(stack.info, mint_dev_token(stack.info.dev_issuer_url, "acme", "alice")))
        (workspace / FILE).write_text("bench\n")
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
        keys = stack.layout.keys
        identity = ensure_signer(keys, "identity")
        session = "bench-session"
        grant = SignedGrant.issue(identity, SessionGrant(
            tenant="acme", workspace="default", user="alice", roles=("member",), channel="bench", session_id=session,
            issued_at=utcnow(), expires_at=utcnow() + timedelta(hours=1)))

        async def connect() -> ToolGateway:
            conn = await EventConnection.connect(stack.worker_bus_settings("planner", "acme", "default", "bench"),
                                                 "bench-planner")
            gateway = ToolGateway(conn, loop, tenant="acme", workspace="default", keyring=load_keyring(keys),
                                  timeouts=GatewayTimeouts(5.0, 30.0))
            await gateway.start()
            gateway.bind_session(session, grant)
            return gateway

        gateway = asyncio.run_coroutine_threadsafe(connect(), loop).result(10)
        args = {"path": FILE}

        def call() -> None:
            outcome = gateway.request_call(TOOL, args, session_id=session)
            if outcome.status != "ok":
                raise RuntimeError(f"governed call failed: {outcome}")

        call()
        try:
            return {n: measure(call, calls, n) for n in LEVELS}, workspace
        finally:
            asyncio.run_coroutine_threadsafe(gateway.conn.close(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
    finally:
        stack.stop()


async def _warm_up(info, token: str) -> None:
    from caduceus_client import ChatClient

    client = await ChatClient.connect(info.bus_settings("client"))
    try:
        await client.send(tenant="acme", token=token, text="noop warm-up", timeout=120)
    finally:
        await client.close()


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), "?")
    return (f"{os.cpu_count()} cores ({cpu}), {int(mem) // 1024 // 1024} GiB, {platform.platform()}, "
            f"Python {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=400, help="calls per concurrency level")
    options = parser.parse_args()
    governed, workspace = run_governed(options.calls)
    baseline_dir = Path(tempfile.mkdtemp(prefix="bench-ws-"))
    (baseline_dir / FILE).write_text("bench\n")
    baseline = run_baseline(baseline_dir, options.calls)
    lines = [
        f"# Governed round trip of `{TOOL}` vs Hermes in-process",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- command: `python3 dev.py bench` (bench/governed_roundtrip.py --calls {options.calls})",
        f"- calls per level: {options.calls}; the whole embedded stack on this machine (NATS, policy, broker, "
        "executor, audit all running)",
        "",
        "| concurrency | governed p50 ms | governed p99 ms | governed calls/s | in-process p50 ms | in-process p99 ms "
        "| in-process calls/s | p50 ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in LEVELS:
        g, b = governed[n], baseline[n]
        lines.append(f"| {n} | {g['p50_ms']:.2f} | {g['p99_ms']:.2f} | {g['calls_per_s']:.0f} | {b['p50_ms']:.3f} "
                     f"| {b['p99_ms']:.3f} | {b['calls_per_s']:.0f} | {g['p50_ms'] / b['p50_ms']:.0f}x |")
    lines += [
        "",
        "How to read it: governed is what a Caduceus turn pays per tool call (publish, policy decides and signs, "
        "broker dispatches, executor verifies and runs, result returns, every event stored by audit), with every "
        "process of the stack sharing this machine's cores. In-process is Hermes's own `handle_function_call` in "
        "threads of one interpreter, so its latency at higher concurrency is queueing behind the GIL. The ratio "
        "is p50 governed over p50 in-process at the same concurrency.",
    ]
    report = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"governed-roundtrip-{datetime.now(UTC):%Y-%m-%d}.md"
    out.write_text(report)
    print(report)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
