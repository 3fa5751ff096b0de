"""Benchmark: governed calls/s on the embedded stack with one process of each service against two, same run.

A governed call is Hermes's `read_file` of a small file in the workspace, sent as the planner sends it (policy
decides and signs, the broker dispatches, the executor verifies and runs it, audit stores every event), from two
tenants at once. Each configuration starts its own stack on free ports (the broker is one process in both: see
`caduceus up --help`) and is measured for the same time at the same concurrency.

    .venv/bin/python bench/replicas.py [--seconds 15] [--concurrency 16]

Writes bench/results/replicas-<date>.md (machine and command recorded) and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from faults import TENANTS, Load, machine, replicated_stack

from caduceus_bus import EventConnection
from caduceus_contracts import SessionGrant, SignedGrant, ensure_signer, load_keyring, utcnow
from caduceus_embedded.stack import EmbeddedStack
from caduceus_hermes_plugin import GatewayTimeouts, ToolGateway

RESULTS = Path(__file__).parent / "results"
TOOL, FILE = "read_file", "bench-note.txt"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(stack: EmbeddedStack, seconds: float, concurrency: int) -> dict[str, float]:
    """Calls/s and latency of `concurrency` callers (split over the tenants) calling for `seconds`."""
    Load(stack).warm_up()  # one chat turn per tenant starts its planner and executor
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    identity = ensure_signer(stack.layout.keys, "identity")

    async def gateway(tenant: str, user: str) -> ToolGateway:
        conn = await EventConnection.connect(stack.worker_bus_settings("planner", tenant, "default", "bench"),
                                             f"bench-{tenant}")
        made = ToolGateway(conn, loop, tenant=tenant, workspace="default", keyring=load_keyring(stack.layout.keys),
                           timeouts=GatewayTimeouts(10.0, 30.0, 5.0))
        await made.start()
        made.bind_session(f"bench-{user}", SignedGrant.issue(identity, SessionGrant(
            tenant=tenant, workspace="default", user=user, roles=("member",), channel="bench",
            session_id=f"bench-{user}", issued_at=utcnow(), expires_at=utcnow() + timedelta(hours=1))))
        return made

    gateways = []
    for tenant, users in TENANTS:
        (stack.layout.workspaces / tenant / "default" / FILE).write_text("bench\n")
        gateways.append((asyncio.run_coroutine_threadsafe(gateway(tenant, users[0]), loop).result(30), users[0]))
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def caller(n: int) -> None:
        nonlocal failures
        gw, user = gateways[n % len(gateways)]
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            outcome = gw.request_call(TOOL, {"path": FILE}, session_id=f"bench-{user}")
            with lock:
                if outcome.status == "ok":
                    latencies.append(time.perf_counter() - started)
                else:
                    failures += 1

    for gw, user in gateways:  # one call each before the clock starts
        assert gw.request_call(TOOL, {"path": FILE}, session_id=f"bench-{user}").status == "ok"
    started = time.monotonic()
    stop_at = started + seconds
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(caller, range(concurrency)))
    wall = time.monotonic() - started
    for gw, _ in gateways:
        asyncio.run_coroutine_threadsafe(gw.conn.close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    return {"calls_per_s": len(latencies) / wall, "p50_ms": statistics.median(latencies) * 1e3,
            "p99_ms": percentile(latencies, 0.99) * 1e3, "failures": failures, "calls": len(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per configuration")
    parser.add_argument("--concurrency", type=int, default=16, help="callers at once, split over the tenants")
    options = parser.parse_args()
    os.environ.pop("CADUCEUS_MODEL_BASE_URL", None)
    say = lambda line: print(f"  {line}", file=sys.stderr)  # noqa: E731
    results = {}
    for replicas in (1, 2):
        with replicated_stack(Path(tempfile.mkdtemp(prefix=f"bench-replicas-{replicas}-")), replicas, say) as stack:
            results[replicas] = measure(stack, options.seconds, options.concurrency)
    one, two = results[1], results[2]
    lines = [
        "# Governed calls/s: one process of each service against two",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- command: `.venv/bin/python bench/replicas.py --seconds {options.seconds:g} "
        f"--concurrency {options.concurrency}`",
        f"- `{TOOL}` of a small file from tenants {', '.join(t for t, _ in TENANTS)}, {options.concurrency} callers, "
        f"{options.seconds:g} s per configuration; each configuration its own embedded stack; one broker in both",
        "",
        "| replicas | calls | calls/s | p50 ms | p99 ms | not ok |",
        "|---|---|---|---|---|---|",
    ]
    for n, r in results.items():
        lines.append(f"| {n} | {r['calls']} | {r['calls_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
                     f"| {r['failures']} |")
    lines += [
        "",
        f"Ratio (two over one): calls/s {two['calls_per_s'] / one['calls_per_s']:.2f}x, "
        f"p50 {two['p50_ms'] / one['p50_ms']:.2f}x.",
        "",
        "How to read it: both stacks run every process on this machine's cores, so a second replica of each "
        "service is more processes competing for the same CPUs, not more CPUs; the broker and each workspace's "
        "executor are one process in both configurations. On one machine, replicas are for surviving a killed "
        "process (bench/faults.py); whether they add throughput needs more machines than this benchmark has.",
    ]
    report = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"replicas-{datetime.now(UTC):%Y-%m-%d}.md"
    out.write_text(report)
    print(report)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
