"""Benchmark: what turn guardrails add to a tool-call decision over the bus, against the same pack without them.

Started here: nats-server and `python -m caduceus_policy` with one pack of two tenants whose rules are the same;
`guarded` also has a `guardrails:` entry (limits high enough never to stop a call), `plain` has none. A client
publishes signed tool-call requests and times each decision, a turn of eight calls under one session grant (each
turn a fresh grant, as identity issues one per message), alternating between the tenants in blocks so both see
the same load. For `guarded` every decision also reads and compare-and-sets the turn's record in JetStream KV
(and, since `same_failing_call` is set, writes the call's index key). Both paths sign and publish the same way.

    .venv/bin/python bench/guardrails_overhead.py [--calls 400]

Writes bench/results/guardrails-overhead-<date>.md and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from governed_roundtrip import machine, percentile
from nats.js.errors import NoStreamResponseError

from caduceus_bus import BusSettings, EventConnection
from caduceus_contracts import (
    SessionGrant,
    SignedGrant,
    ToolCallDecided,
    ToolCallRequested,
    call_digest,
    ensure_signer,
    parse_event,
    subjects,
    utcnow,
)
from caduceus_embedded.ports import free_port
from caduceus_embedded.servers import start_nats

RESULTS = Path(__file__).parent / "results"
RULES = "    rules:\n      - {id: members-work, effect: allow, roles: [member], tools: [terminal]}\n"
PACK = ('version: "bench-guardrails.1"\ntenants:\n'
        f"  plain:\n{RULES}"
        f"  guarded:\n{RULES}"
        "    guardrails:\n"
        "      - {id: never-reached, tool_calls: 100000, same_call: 100000, same_failing_call: 3, wall_time: 1h}\n")
BLOCK = 24
TURN_CALLS = 8


async def measure(nats_url: str, keys: Path, calls: int) -> dict[str, list[float]]:
    identity = ensure_signer(keys, "identity")
    conn = await EventConnection.connect(BusSettings(nats_url=nats_url), "bench-guardrails")
    waiting: dict[str, asyncio.Future] = {}

    async def on_decided(msg) -> None:
        event = parse_event(msg.data, subject=msg.subject)
        if isinstance(event, ToolCallDecided) and event.call_id in waiting:
            waiting[event.call_id].set_result(event)

    for tenant in ("plain", "guarded"):
        await conn.subscribe(subjects.tool_decided(tenant), on_decided)
    grants: dict[str, tuple[SignedGrant, int]] = {}

    async def decide(tenant: str, n: int) -> float:
        grant, used = grants.get(tenant, (None, TURN_CALLS))
        if grant is None or used >= TURN_CALLS:  # a new message, a new turn
            now = utcnow()
            grant, used = SignedGrant.issue(identity, SessionGrant(
                tenant=tenant, workspace="default", user="alice", roles=("member",), channel="bench",
                session_id="bench", issued_at=now, expires_at=now + timedelta(hours=1))), 0
        grants[tenant] = (grant, used + 1)
        args = {"command": f"echo {n}"}
        request = ToolCallRequested(tenant=tenant, grant=grant, workspace="default", session_id="bench",
                                    tool="terminal", args=args, digest=call_digest(
                                        tenant=tenant, workspace="default", session="bench", tool="terminal",
                                        args=args))
        future = waiting[request.call_id] = asyncio.get_running_loop().create_future()
        start = time.perf_counter()
        await conn.publish(subjects.tool_requested(tenant), request)
        decided = await asyncio.wait_for(future, 10)
        elapsed = time.perf_counter() - start
        del waiting[request.call_id]
        assert decided.decision.decision.verdict == "allow", decided.decision.decision.reason
        return elapsed

    samples: dict[str, list[float]] = {"plain": [], "guarded": []}
    deadline = time.monotonic() + 60
    while True:  # policy up and deciding both tenants
        try:
            await decide("plain", -1)
            await decide("guarded", -1)
            break
        except (TimeoutError, NoStreamResponseError):  # no stream yet: policy creates it as it starts
            if time.monotonic() > deadline:
                raise SystemExit("policy did not decide in time (see its log)") from None
            await asyncio.sleep(0.3)
    for tenant in samples:  # warm up
        for n in range(BLOCK):
            await decide(tenant, n)
    done = 0
    while done < calls:
        for tenant in samples:
            for n in range(BLOCK):
                samples[tenant].append(await decide(tenant, done + n))
        done += BLOCK
    await conn.close()
    return samples


def row(name: str, values: list[float]) -> str:
    return (f"| {name} | {statistics.median(values) * 1e3:.2f} | {percentile(values, 0.99) * 1e3:.2f} | "
            f"{statistics.fmean(values) * 1e3:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=400, help="decisions per tenant")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-guardrails-"))
    nats = start_nats(free_port(), work / "js", work / "nats.log")
    (work / "policy.yaml").write_text(PACK)
    policy = subprocess.Popen(
        [sys.executable, "-m", "caduceus_policy"], stdout=(work / "policy.log").open("wb"), stderr=subprocess.STDOUT,
        env={**os.environ, "CADUCEUS_NATS_URL": nats.urls["nats"], "CADUCEUS_STATE_DIR": str(work),
             "CADUCEUS_KEYS_DIR": str(work / "keys"), "CADUCEUS_POLICY_FILE": str(work / "policy.yaml")})
    try:
        samples = asyncio.run(measure(nats.urls["nats"], work / "keys", options.calls))
    finally:
        policy.terminate()
        policy.wait(10)
        nats.stop()
        shutil.rmtree(work, ignore_errors=True)
    stamp = datetime.now(UTC)
    plain, guarded = samples["plain"], samples["guarded"]
    added = statistics.median(guarded) - statistics.median(plain)
    ratio = statistics.median(guarded) / statistics.median(plain)
    report = "\n".join([
        "# Turn guardrails' cost to a tool-call decision, against the same pack without them in the same run",
        "",
        f"- date: {stamp:%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- command: `bench/guardrails_overhead.py --calls {options.calls}`",
        f"- {options.calls} sequential decisions per tenant, turns of {TURN_CALLS} calls under one grant, tenants "
        f"alternating in blocks of {BLOCK}; nats-server, policy and this client share the machine's cores.",
        "",
        "| decision round trip (publish request, receive signed decision) | p50 ms | p99 ms | mean ms |",
        "|---|---|---|---|",
        row("tenant without guardrails", plain),
        row("tenant with guardrails", guarded),
        "",
        f"Added at the median: +{added * 1e3:.2f} ms ({ratio:.2f}x). What it pays for: the turn's record written to "
        "JetStream KV by compare-and-set (read first only for a turn's first call on this replica, or after another "
        "replica changed it), and the call's index key written (for failing-call loops): two round trips to "
        "nats-server before the rules run.",
        "",
    ])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"guardrails-overhead-{stamp:%Y-%m-%d}.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
