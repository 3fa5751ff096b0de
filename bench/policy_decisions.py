"""Benchmark: policy decision latency, in-process and over the bus.

In-process, for packs of 10, 100 and 1,000 rules: the engine deciding a call whose facts are
already extracted (`engine.decide`), the whole decision including fact extraction
(`request_facts` + `engine.decide`), and, as the baseline in the same run, cedarpy alone
evaluating the same compiled policies (the whole pack's PolicySet, every fact in the context).
Over the bus: `python -m caduceus_policy` with the default pack on a real nats-server; a client
publishes signed requests and times each decision (sequentially for latency, 16 in flight for
decisions/s); the service verifies the grant and digest, decides, charges the terminal rate
limit in JetStream KV and signs. Twice: as a planner sends calls (a turn of four calls under one
session grant, each turn another user), and with a new grant and user for every call (nothing a
replica remembers between calls, neither a verified grant nor a counter, can help).

    python3 dev.py bench            # or: .venv/bin/python bench/policy_decisions.py
    --decisions N   in-process decisions per pack size and kind (default 3000)
    --calls N       calls over the bus per mode (default 600)
    --in-process    only the in-process part, printed as a table (nothing written): for comparing two versions
                    of the code under the same conditions
    --cpu-time      with --in-process: time each decision by the thread's CPU time instead of wall time

Writes bench/results/policy-decisions-<date>.md and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from importlib import resources
from pathlib import Path, PurePosixPath

import cedarpy

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
from caduceus_policy import engine_from_files, request_facts
from caduceus_policy.engine import ENTITIES, policy_set
from caduceus_policy.pack.compiler import ACTION, NAMESPACE

RESULTS = Path(__file__).parent / "results"
SIZES = (10, 100, 1000)
TURN_CALLS = 4  # tool calls per planner turn, all under the turn's one session grant
ROOT = PurePosixPath("/srv/caduceus/workspaces/acme/default")
CALLS = [
    ("terminal", {"command": "echo hello from the executor && pwd"}),
    ("terminal", {"command": "rm -rf build && git status"}),
    ("write_file", {"path": "/etc/caduceus-demo.txt", "content": "note"}),
    ("read_file", {"path": "src/app.py"}),
    ("tool_7", {"query": "weekly report"}),
]
FACT_RULES = [
    ("destructive: true", "approve"), ("privilege_raising: true", "approve"), ("writes_outside_workspace: true", "deny"),
    ("touches_secret_file: true", "deny"), ("url_private_network: true", "deny"), ("network: true", "approve"),
    ("binaries: [curl, wget]", "deny"), ("code_operations: {any_of: [process]}", "approve"),
]


def synthetic_pack(rules: int) -> dict[str, str]:
    """A pack of `rules` rules over 50 tools and the workspace tools, like a large tenant's."""
    lines = ['version: "bench"', "tenants:", "  acme:", "    approvals: {approvers: admins}", "    rules:",
             "      - {id: members, effect: allow, roles: [member], tools: [terminal, read_file, write_file, tool_7]}"]
    for index in range(1, rules):
        tool = ["terminal", "write_file", "read_file"][index % 3] if index % 10 == 0 else f"tool_{index % 50}"
        when, effect = FACT_RULES[index % len(FACT_RULES)]
        if effect == "approve" or index % 4:
            lines.append(f"      - {{id: r{index}, effect: {effect}, roles: [member], tools: [{tool}], "
                         f"when: {{{when}}}}}")
        else:
            lines.append(f"      - {{id: r{index}, effect: allow, roles: [role_{index}], tools: [{tool}]}}")
    return {"policy.yaml": "\n".join(lines) + "\n"}


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


# The clock in-process samples are taken with: wall time, or (--cpu-time) this thread's CPU time, which leaves out
# the time other processes on a shared machine hold the cores (what the code costs, not what the machine gave it).
CLOCK = time.perf_counter


def timed(function, arguments: list, repeat: int) -> list[float]:  # type: ignore[no-untyped-def]
    samples = []
    gc.collect()
    gc.disable()  # a collection in the middle of one decision is not the decision's cost
    try:
        for index in range(repeat):
            argument = arguments[index % len(arguments)]
            start = CLOCK()
            function(argument)
            samples.append(CLOCK() - start)
    finally:
        gc.enable()
    return samples


def decide_call(engine, call: tuple[str, dict]) -> None:  # type: ignore[no-untyped-def]
    engine.decide(request_facts("acme", ("member",), call[0], call[1], ROOT, user="alice"))


def cedar_only(policies: cedarpy.PolicySet, request: dict) -> None:
    cedarpy.is_authorized(request, policies, ENTITIES)


def in_process(decisions: int) -> list[dict[str, float]]:
    rows = []
    for size in SIZES:
        engine = engine_from_files(synthetic_pack(size))
        tenant = engine.tenants["acme"]
        requests = [request_facts("acme", ("member",), tool, args, ROOT, user="alice") for tool, args in CALLS]
        whole = engine.decide  # warm the per-tool policy sets
        for request in requests:
            whole(request)
        full_set = policy_set(tenant.policies)
        cedar_requests = []
        for request in requests:
            facts, _ = engine.tenant_facts(tenant.policy, request)
            cedar_requests.append({
                "principal": {"type": f"{NAMESPACE}::User", "id": "alice"}, "action": ACTION,
                "resource": {"type": f"{NAMESPACE}::Tool", "id": request.tool},
                "context": {k: sorted(v) if isinstance(v, set | tuple) else v for k, v in facts.items()},
            })
        engine_only = timed(engine.decide, requests, decisions)
        with_facts = timed(partial(decide_call, engine), CALLS, decisions)
        cedar_alone = timed(partial(cedar_only, full_set), cedar_requests, decisions)
        row = {"rules": size, "policies": len(tenant.policies)}
        for name, samples in (("engine", engine_only), ("whole", with_facts), ("cedar", cedar_alone)):
            p50, p99 = percentiles(samples)
            row[f"{name}_p50_us"], row[f"{name}_p99_us"] = p50 * 1e6, p99 * 1e6
        rows.append(row)
    return rows


# The baseline over the bus: a process that answers each request the way policy does (a queue subscription
# on the requests, a JetStream publish of the answer on the decisions subject) without deciding anything.
ECHO = """
import asyncio, json, sys
import nats

async def main():
    nc = await nats.connect(sys.argv[1])
    js = nc.jetstream()
    async def on_request(msg):
        call_id = json.loads(msg.data)["call_id"]
        await js.publish("cad.v1.tool.decided.acme", json.dumps({"call_id": call_id}).encode())
    async def on_health(msg):
        await msg.respond(b"ok")
    await nc.subscribe("cad.v1.tool.requested.*", queue="policy", cb=on_request)
    await nc.subscribe("caduceus.health.echo", cb=on_health)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def over_the_bus(calls: int) -> dict[str, dict[str, float]]:
    """Latency and decisions/s per way of sending calls: `turns` (one grant per turn), `fresh` (one per call)."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-policy-"))
    port = free_port()
    nats = start_nats(port, workdir / "nats", workdir / "nats.log")
    url = f"nats://127.0.0.1:{port}"
    pack = Path(str(resources.files("caduceus_embedded") / "defaults" / "policy.yaml"))
    identity = ensure_signer(workdir / "keys", "identity")
    env = {**os.environ, "CADUCEUS_STATE_DIR": str(workdir), "CADUCEUS_NATS_URL": url,
           "CADUCEUS_POLICY_FILE": str(pack), "OTEL_SDK_DISABLED": "true"}
    service = subprocess.Popen([sys.executable, "-m", "caduceus_policy"], env=env, stdout=subprocess.DEVNULL,
                               stderr=open(workdir / "policy.log", "wb"))
    conn = await EventConnection.connect(BusSettings(nats_url=url), "bench-policy")
    echo: subprocess.Popen[bytes] | None = None

    async def ready(subject: str) -> None:
        for _ in range(200):
            try:
                await conn.nc.request(subject, b"", timeout=0.2)
                return
            except Exception:
                await asyncio.sleep(0.1)
        raise RuntimeError(f"nothing answered {subject} within a minute (see the logs in {workdir})")

    try:
        await conn.ensure_stream()
        await ready("caduceus.health.policy")
        waiting: dict[str, asyncio.Future[float]] = {}

        async def on_decided(msg) -> None:  # type: ignore[no-untyped-def]
            if echo is not None:  # the baseline answers with the call id alone
                call_id = json.loads(msg.data)["call_id"]
            else:
                call_id = parse_event(msg.data, expect=ToolCallDecided).call_id
            future = waiting.pop(call_id, None)
            if future is not None and not future.done():
                future.set_result(time.perf_counter())

        await conn.subscribe(subjects.TOOL_DECIDED_ALL, on_decided)
        await conn.nc.flush()

        grants: dict[str, SignedGrant] = {}

        def request(index: int, turns: bool) -> ToolCallRequested:
            # The default pack's terminal rate limit is per user: each user stays under it.
            user = f"turn-{index // TURN_CALLS}" if turns else f"user-{index}"
            grant = grants.get(user)
            if grant is None:
                now = utcnow()
                grant = grants[user] = SignedGrant.issue(identity, SessionGrant(
                    tenant="acme", workspace="default", user=user, roles=("member",), channel="bench",
                    session_id="s1", issued_at=now, expires_at=now + timedelta(minutes=10)))
            tool, args = CALLS[index % 4]
            digest = call_digest(tenant="acme", workspace="default", session="s1", tool=tool, args=args)
            return ToolCallRequested(tenant="acme", grant=grant, workspace="default", session_id="s1", tool=tool,
                                     args=args, digest=digest)

        async def one(index: int, turns: bool) -> float:
            call = request(index, turns)
            future = asyncio.get_running_loop().create_future()
            waiting[call.call_id] = future
            start = time.perf_counter()
            await conn.publish(subjects.tool_requested("acme"), call)
            return await asyncio.wait_for(future, 10) - start

        for index in range(52):
            await one(1_000_000 + index, True)  # warm up: per-tool policy sets, KV buckets
        in_flight = asyncio.Semaphore(16)

        async def bounded(index: int, turns: bool) -> float:
            async with in_flight:
                return await one(index, turns)

        results = {}
        for mode, turns, first in (("turns", True, 100_000), ("fresh", False, 200_000)):
            sequential = [await one(first + index, turns) for index in range(calls)]
            started = time.perf_counter()
            await asyncio.gather(*(bounded(first + 50_000 + index, turns) for index in range(calls)))
            wall = time.perf_counter() - started
            p50, p99 = percentiles(sequential)
            results[mode] = {"p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3, "decisions_per_s": calls / wall}

        # The baseline: the same requests, published the same way, answered by the echo instead of policy.
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=15)
        echo = subprocess.Popen([sys.executable, "-c", ECHO, url], stdout=subprocess.DEVNULL,
                                stderr=open(workdir / "echo.log", "wb"))
        await ready("caduceus.health.echo")
        for index in range(52):
            await one(3_000_000 + index, False)
        sequential = [await one(300_000 + index, False) for index in range(calls)]
        started = time.perf_counter()
        await asyncio.gather(*(bounded(350_000 + index, False) for index in range(calls)))
        wall = time.perf_counter() - started
        p50, p99 = percentiles(sequential)
        results["echo"] = {"p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3, "decisions_per_s": calls / wall}
        return results
    finally:
        await conn.nc.close()
        for process in (service, echo):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=15)
        nats.stop()


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return f"{os.cpu_count()} cores ({cpu}), {platform.platform()}, Python {platform.python_version()}; " \
           f"load average {load} when the run ended (other work on the machine shows up in p99)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=3000, help="in-process decisions per pack size and kind")
    parser.add_argument("--calls", type=int, default=600, help="calls over the bus per mode")
    parser.add_argument("--in-process", action="store_true", help="only the in-process part, printed")
    parser.add_argument("--cpu-time", action="store_true", help="with --in-process: the thread's CPU time")
    options, _ = parser.parse_known_args()  # `dev.py bench` passes the same arguments to every benchmark
    if options.in_process and options.cpu_time:
        global CLOCK
        CLOCK = time.thread_time
    rows = in_process(options.decisions)
    if options.in_process:
        for row in rows:
            print(f"| {row['rules']} | {row['engine_p50_us']:.0f} | {row['engine_p99_us']:.0f} | "
                  f"{row['whole_p50_us']:.0f} | {row['whole_p99_us']:.0f} |")
        print(f"machine: {machine()}")
        return
    bus = asyncio.run(over_the_bus(options.calls))
    lines = [
        "# Policy decisions: in-process and over the bus",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- command: `python3 dev.py bench` (bench/policy_decisions.py --decisions {options.decisions} "
        f"--calls {options.calls})",
        f"- calls: {', '.join(f'{tool} {json.dumps(args)}' for tool, args in CALLS)} (round robin)",
        "",
        "## In-process (µs per decision)",
        "",
        "| rules | Cedar policies | engine p50 | engine p99 | with fact extraction p50 | with fact extraction p99 "
        "| cedarpy alone p50 | cedarpy alone p99 | engine p50 / cedarpy p50 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['rules']} | {row['policies']} | {row['engine_p50_us']:.0f} | {row['engine_p99_us']:.0f} "
                     f"| {row['whole_p50_us']:.0f} | {row['whole_p99_us']:.0f} | {row['cedar_p50_us']:.0f} "
                     f"| {row['cedar_p99_us']:.0f} | {row['engine_p50_us'] / row['cedar_p50_us']:.2f} |")
    lines += [
        "",
        "## Over the bus (default pack, `python -m caduceus_policy`, real nats-server)",
        "",
        "| calls sent | p50 ms | p99 ms | decisions/s (16 in flight) |",
        "|---|---|---|---|",
        f"| as a planner sends them: a turn of {TURN_CALLS} calls per session grant, each turn another user "
        f"| {bus['turns']['p50_ms']:.2f} | {bus['turns']['p99_ms']:.2f} | {bus['turns']['decisions_per_s']:.0f} |",
        f"| a new session grant and user for every call | {bus['fresh']['p50_ms']:.2f} "
        f"| {bus['fresh']['p99_ms']:.2f} | {bus['fresh']['decisions_per_s']:.0f} |",
        f"| baseline: the same requests answered by an echo process (no decision), same bus path "
        f"| {bus['echo']['p50_ms']:.2f} | {bus['echo']['p99_ms']:.2f} | {bus['echo']['decisions_per_s']:.0f} |",
        "",
        f"Policy over the echo baseline, p50: {bus['turns']['p50_ms'] / bus['echo']['p50_ms']:.1f}x "
        f"(+{bus['turns']['p50_ms'] - bus['echo']['p50_ms']:.2f} ms) as a planner sends calls, "
        f"{bus['fresh']['p50_ms'] / bus['echo']['p50_ms']:.1f}x "
        f"(+{bus['fresh']['p50_ms'] - bus['echo']['p50_ms']:.2f} ms) with a fresh grant per call.",
        "",
        "How to read it: *engine* is `CedarEngine.decide` on a call whose facts are already extracted (what a rule "
        "count changes); *with fact extraction* adds parsing the command, resolving paths and URLs and scanning for "
        "secrets. *cedarpy alone* is `cedarpy.is_authorized` on the whole pack's compiled PolicySet with the full "
        "context, the same calls: the engine hands Cedar only the policies that can speak about the call's tool and "
        "only the context attributes they read, which is why it does not grow with the pack. Over the bus, each "
        "decision also verifies the session grant signature (once per grant: a verified grant is remembered) and "
        "the call digest, charges the terminal rate limit in JetStream KV (a compare-and-set round trip; one more "
        "read when the replica has not seen the user's counter yet) and signs the decision, on the same two cores "
        "as NATS and the client; the latency is from the client's publish to the decision reaching it, one call "
        "at a time. The baseline is a bare nats-py process that takes each request from the same queue "
        "subscription and publishes an answer to JetStream on the decisions subject, with nothing decided: the "
        "floor this machine's bus and processes set.",
    ]
    report = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"policy-decisions-{datetime.now(UTC):%Y-%m-%d}.md"
    out.write_text(report)
    print(report)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
