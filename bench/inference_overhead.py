"""Benchmark: what the inference gateway adds to a model call, against calling the model server directly.

Started here, each its own process: nats-server, the scripted model (`caduceus_embedded.scripted_model`), the
policy service (the shipped default pack) and the inference gateway in front of the scripted model. The same
chat.completions request (`hello`, one user message) is sent, alternating in blocks so both paths see the same
load, to:

- the model server directly (the baseline: what the planner did before the gateway);
- the gateway, with a session grant as the API key: the grant verified, policy asked on the bus (budgets,
  data rules, route) and its signed decision verified, the prompt redacted, the upstream called, usage and
  outcome published.

Per path: the whole call (non-streaming) and the time to the first streamed event (`stream: true`).

    .venv/bin/python bench/inference_overhead.py [--calls 300]

Writes bench/results/inference-overhead-<date>.md and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from governed_roundtrip import machine, percentile

from caduceus_contracts import SessionGrant, SignedGrant, ensure_signer, utcnow
from caduceus_embedded.ports import free_port
from caduceus_embedded.scripted_model import default_scenarios_path
from caduceus_embedded.servers import start_nats, start_scripted_model

RESULTS = Path(__file__).parent / "results"
DEFAULT_PACK = Path(__file__).parents[1] / "libs/embedded/src/caduceus_embedded/defaults/policy.yaml"
BODY = {"model": "scripted", "messages": [{"role": "user", "content": "hello"}]}
SENT = iter(range(1 << 62))


def body() -> dict:
    """BODY with a numbered prompt: the same prompt sent again and again is a loop to the pack's turn guardrails."""
    return {**BODY, "messages": [{"role": "user", "content": f"hello {next(SENT)}"}]}
BLOCK = 25
# Back to back, every process on this machine is busy (usage counted, counters updated between calls); paced,
# each call finds the services idle, as a planner's calls (seconds apart) do.
PACE_S = 0.1


def spawn_service(module: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module], env={**os.environ, **env},
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


async def wait_for_gateway(client: httpx.AsyncClient, url: str, key: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reply = await client.post(f"{url}/chat/completions", json=BODY,
                                      headers={"authorization": f"Bearer {key}"})
            if reply.status_code == 200 and "x-caduceus-refused" not in reply.headers:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.3)
    raise SystemExit("the inference gateway did not answer an allowed call in time (see its log)")


async def one_call(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> float:
    start = time.perf_counter()
    reply = await client.post(f"{url}/chat/completions", json=body(), headers=headers)
    elapsed = time.perf_counter() - start
    assert reply.status_code == 200 and "x-caduceus-refused" not in reply.headers, reply.text
    return elapsed


async def first_event(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> float:
    start = time.perf_counter()
    async with client.stream("POST", f"{url}/chat/completions", json={**body(), "stream": True},
                             headers=headers) as reply:
        assert "x-caduceus-refused" not in reply.headers
        elapsed = None
        async for line in reply.aiter_lines():  # read to the end: the connection is reused
            if elapsed is None and line.startswith("data:"):
                elapsed = time.perf_counter() - start
    assert elapsed is not None, "the stream held no event"
    return elapsed


def run(calls: int, work: Path) -> dict[str, dict[str, list[float]]]:
    keys = work / "keys"
    identity = ensure_signer(keys, "identity")
    now = utcnow()
    grant = SignedGrant.issue(identity, SessionGrant(
        tenant="acme", workspace="default", user="alice", roles=("member",), channel="bench", session_id="bench",
        issued_at=now, expires_at=now + timedelta(hours=2)))
    nats = start_nats(free_port(), work / "js", work / "nats.log")
    model = start_scripted_model(free_port(), default_scenarios_path(), work / "model.log")
    model_url = model.urls["model"]
    gateway_port = free_port()
    common = {"CADUCEUS_NATS_URL": nats.urls["nats"], "CADUCEUS_STATE_DIR": str(work),
              "CADUCEUS_KEYS_DIR": str(keys)}
    shutil.copy(DEFAULT_PACK, work / "policy.yaml")
    processes = [
        spawn_service("caduceus_policy", {**common, "CADUCEUS_POLICY_FILE": str(work / "policy.yaml")},
                      work / "policy.log"),
        spawn_service("caduceus_inference", {**common, "CADUCEUS_INFERENCE_PORT": str(gateway_port),
                                             "CADUCEUS_INFERENCE_UPSTREAMS": json.dumps(
                                                 {"default": {"base_url": model_url, "api_key": "scripted"}})},
                      work / "inference.log"),
    ]
    gateway_url = f"http://127.0.0.1:{gateway_port}/v1"
    paths = {"direct": (model_url, {"authorization": "Bearer scripted"}),
             "gateway": (gateway_url, {"authorization": f"Bearer {grant.as_api_key()}"})}
    samples: dict[str, dict[str, list[float]]] = {mode + name: {"call": [], "first": []} for name in paths
                                                  for mode in ("", "paced ")}
    try:
        asyncio.run(measure(paths, samples, calls, gateway_url, grant.as_api_key()))
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)
        model.stop()
        nats.stop()
    return samples


async def measure(paths: dict, samples: dict, calls: int, gateway_url: str, key: str) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        await wait_for_gateway(client, gateway_url, key)
        for url, headers in paths.values():  # warm both paths up
            for _ in range(10):
                await one_call(client, url, headers)
                await first_event(client, url, headers)
        for mode, count, pause in (("", calls, 0.0), ("paced ", max(BLOCK, calls // 4), PACE_S)):
            done = 0
            while done < count:
                for name, (url, headers) in paths.items():
                    for _ in range(BLOCK):
                        samples[mode + name]["call"].append(await one_call(client, url, headers))
                        await asyncio.sleep(pause)
                        samples[mode + name]["first"].append(await first_event(client, url, headers))
                        await asyncio.sleep(pause)
                done += BLOCK


def row(name: str, values: list[float]) -> str:
    return (f"| {name} | {statistics.median(values) * 1e3:.2f} | {percentile(values, 0.99) * 1e3:.2f} | "
            f"{statistics.fmean(values) * 1e3:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per path (and as many streamed)")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    try:
        samples = run(options.calls, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stamp = datetime.now(UTC)
    lines = [
        "# Inference gateway overhead, against calling the model server directly in the same run",
        "",
        f"- date: {stamp:%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- command: `bench/inference_overhead.py --calls {options.calls}`",
        f"- back to back: {options.calls} whole calls and {options.calls} streamed per path; paced: "
        f"{max(BLOCK, options.calls // 4)} of each with {PACE_S * 1e3:.0f} ms between calls; paths alternate in "
        f"blocks of {BLOCK}. Upstream: the scripted model (answers at once, so the numbers are the gateway's own "
        "cost). nats-server, policy, the gateway, the model and this client share the machine's cores.",
        "",
    ]
    summary = []
    for mode in ("", "paced "):
        direct, gateway = samples[mode + "direct"], samples[mode + "gateway"]
        for what, key in (("whole call (non-streaming)", "call"), ("first streamed event", "first")):
            lines += [f"| {mode or 'back to back: '}{what} | p50 ms | p99 ms | mean ms |", "|---|---|---|---|",
                      row("model server directly", direct[key]), row("through the inference gateway", gateway[key]),
                      ""]
            added = statistics.median(gateway[key]) - statistics.median(direct[key])
            ratio = statistics.median(gateway[key]) / statistics.median(direct[key])
            summary.append(f"{(mode or 'back to back ').strip()}, {what}: +{added * 1e3:.2f} ms ({ratio:.1f}x)")
    lines += [
        "Added at the median: " + "; ".join(summary) + ". What it pays for: the session grant's signature "
        "verified, a round trip to policy on the bus (grant verified again, prompt digest, token and cost budgets "
        "read from the shared JetStream KV counters, data classes found in the prompt, the route chosen, the "
        "decision signed), the decision's signature verified, the prompt redacted, one more HTTP hop, and usage "
        "and outcome published (then counted by policy in the KV counters). Back to back, that background work of "
        "every call competes for the two cores with the next call; paced, it does not.",
        "",
    ]
    report = "\n".join(lines)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"inference-overhead-{stamp:%Y-%m-%d}.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
