"""Benchmark: how fast an approval reaches its approver, and how fast an approval reaches the executor.

On the whole embedded stack, a planner's gateway asks for `terminal` `rm -f bench-N.log && echo ok`, which the
default policy sends for approval. Measured on this process's clock, per call:

- inbox latency: from the `approve` decision arriving on the bus to the call appearing in carol's live inbox
  stream (the SSE `/events` the UI listens to);
- approve-to-executor latency: from the moment carol's approve is sent (the approvals API, the UI's desk) to the
  call being dispatched to the executor (the executor gets it at that moment) and to its result.

Baseline in the same run: an allowed call (`echo ok`), from its `allow` decision on the bus to its dispatch
(the broker's hop alone), so the ratio is what the approval's round trip through Temporal adds.

    python3 dev.py bench             # or: .venv/bin/python bench/approval_latency.py
    --approvals N    approvals to time (default 40)

Writes bench/results/approval-latency-<date>.md and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

sys.path.insert(0, str(Path(__file__).parent))
from governed_roundtrip import _warm_up, machine, percentile

RESULTS = Path(__file__).parent / "results"
SESSION = "bench-approvals"


def summary(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e3:.1f} | {percentile(samples, 0.99) * 1e3:.1f}"


async def sign_in(http, ui_url: str, who: str) -> None:
    """Sign `http` in to the approvals UI through the dev issuer's page, as a browser would."""
    to_provider = await http.get(f"{ui_url}/login", params={"next": "/"})
    authorize = to_provider.headers["location"]
    back = await http.post(authorize.split("?")[0], data={**dict(parse_qsl(urlsplit(authorize).query)), "who": who})
    await http.get(back.headers["location"])


class BusClock:
    """When each call's approve/allow decision and its dispatch were seen on the bus (this process's clock)."""

    def __init__(self) -> None:
        self.decided: dict[str, tuple[str, float]] = {}
        self.dispatched: dict[str, float] = {}

    async def on_decided(self, msg) -> None:
        from caduceus_contracts import ToolCallDecided, parse_event

        event = parse_event(msg.data, expect=ToolCallDecided)
        self.decided.setdefault(event.call_id + ":" + event.decision.decision.verdict,
                                (event.decision.decision.verdict, time.perf_counter()))

    async def on_dispatched(self, msg) -> None:
        from caduceus_contracts import ToolCallDispatched, parse_event

        self.dispatched.setdefault(parse_event(msg.data, expect=ToolCallDispatched).call_id, time.perf_counter())

    def at(self, call_id: str, verdict: str) -> float | None:
        entry = self.decided.get(f"{call_id}:{verdict}")
        return entry[1] if entry else None


async def wait_for(predicate, timeout: float = 60.0):
    async with asyncio.timeout(timeout):
        while (value := predicate()) is None:
            await asyncio.sleep(0.001)
    return value


async def measure(stack, approvals: int) -> dict[str, list[float]]:
    import httpx

    from caduceus_bus import EventConnection
    from caduceus_client import ApprovalsClient
    from caduceus_contracts import SessionGrant, SignedGrant, ensure_signer, load_keyring, utcnow
    from caduceus_hermes_plugin import GatewayTimeouts, ToolGateway
    from caduceus_identity.devtoken import mint_dev_token

    info = stack.info
    clock = BusClock()
    conn = await EventConnection.connect(info.bus_settings("client"), "bench-approvals")
    await conn.subscribe("cad.v1.tool.decided.acme", clock.on_decided)
    await conn.subscribe("cad.v1.tool.dispatched.acme.>", clock.on_dispatched)

    # The planner side: a gateway on its own loop thread, as in a planner process.
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    grant = SignedGrant.issue(ensure_signer(stack.layout.keys, "identity"), SessionGrant(
        tenant="acme", workspace="default", user="alice", roles=("member",), channel="bench", session_id=SESSION,
        issued_at=utcnow(), expires_at=utcnow() + timedelta(hours=1)))

    async def connect() -> ToolGateway:
        planner = await EventConnection.connect(stack.worker_bus_settings("planner", "acme", "default", "bench"),
                                                "bench-planner")
        gateway = ToolGateway(planner, loop, tenant="acme", workspace="default", keyring=load_keyring(stack.layout.keys),
                              timeouts=GatewayTimeouts(5.0, 30.0, 120.0))
        await gateway.start()
        gateway.bind_session(SESSION, grant)
        return gateway

    gateway = asyncio.run_coroutine_threadsafe(connect(), loop).result(10)
    results: dict[str, list[float]] = {"inbox": [], "to_dispatch": [], "to_result": [], "allow_to_dispatch": []}
    seen: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=30) as browser, \
            ApprovalsClient(info.approval_ui_url, mint_dev_token(info.dev_issuer_url, "acme", "carol")) as api:
        await sign_in(browser, info.approval_ui_url, "acme/carol")

        async def follow_inbox() -> None:
            async with browser.stream("GET", f"{info.approval_ui_url}/events") as stream:
                async for line in stream.aiter_lines():
                    if line.startswith("data:"):
                        data = json.loads(line[5:])
                        if data["status"] == "pending":
                            seen.setdefault(data["call_id"], time.perf_counter())

        follower = asyncio.create_task(follow_inbox())
        await asyncio.sleep(0.5)
        for index in range(approvals):
            known = set(seen)
            call = asyncio.to_thread(gateway.request_call, "terminal",
                                     {"command": f"rm -rf build-{index} && echo ok"}, session_id=SESSION)
            running = asyncio.ensure_future(call)
            call_id = await wait_for(lambda known=known: next((c for c in seen if c not in known), None))
            decided_at = await wait_for(lambda call_id=call_id: clock.at(call_id, "approve"))
            results["inbox"].append(seen[call_id] - decided_at)
            view = await api.show(call_id)
            sent = time.perf_counter()
            await api.answer(call_id, "approve", digest=view.digest)
            dispatched = await wait_for(lambda call_id=call_id: clock.dispatched.get(call_id))
            outcome = await running
            done = time.perf_counter()
            if outcome.status != "ok":
                raise RuntimeError(f"approved call did not run: {outcome}")
            results["to_dispatch"].append(dispatched - sent)
            results["to_result"].append(done - sent)
        follower.cancel()

    for index in range(approvals):  # the baseline: allowed calls, same path without people
        outcome = await asyncio.to_thread(gateway.request_call, "terminal", {"command": f"echo ok {index}"},
                                          session_id=SESSION)
        if outcome.status != "ok":
            raise RuntimeError(f"allowed call did not run: {outcome}")
    for call_id, dispatched in clock.dispatched.items():
        allowed = clock.at(call_id, "allow")
        if allowed is not None and clock.at(call_id, "approve") is None:
            results["allow_to_dispatch"].append(dispatched - allowed)
    asyncio.run_coroutine_threadsafe(gateway.conn.close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    await conn.close()
    return results


def main() -> None:
    from caduceus_embedded.ports import StackPorts
    from caduceus_embedded.stack import EmbeddedStack
    from caduceus_identity.devtoken import mint_dev_token

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--approvals", type=int, default=40, help="approvals to time")
    options = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="bench-approvals-"))
    stack = EmbeddedStack(state, StackPorts.free(), on_progress=lambda line: print(f"  {line}", file=sys.stderr))
    stack.start()
    try:
        asyncio.run(_warm_up(stack.info, mint_dev_token(stack.info.dev_issuer_url, "acme", "alice")))
        results = asyncio.run(measure(stack, options.approvals))
    finally:
        stack.stop()
    ratio = statistics.median(results["to_dispatch"]) / statistics.median(results["allow_to_dispatch"])
    lines = [
        "# Approval latency: to the approver's inbox, and from approve to the executor",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- command: `python3 dev.py bench` (bench/approval_latency.py --approvals {options.approvals})",
        f"- {options.approvals} approvals, one at a time, on the whole embedded stack on this machine (NATS, "
        "Temporal dev server on SQLite, policy, approval, broker, executor, audit)",
        "",
        "| measured | p50 ms | p99 ms |",
        "|---|---|---|",
        f"| `approve` decision on the bus → request visible in the inbox (SSE) | {summary(results['inbox'])} |",
        f"| approve sent (approvals API) → call dispatched to the executor | {summary(results['to_dispatch'])} |",
        f"| approve sent (approvals API) → the tool's result back at the planner | {summary(results['to_result'])} |",
        f"| baseline: `allow` decision on the bus → call dispatched (broker only) "
        f"| {summary(results['allow_to_dispatch'])} |",
        "",
        f"Approve → dispatch is {ratio:.0f}x the broker's own hop at p50: the answer goes through the desk (token "
        "check, signing), a Temporal update, the workflow's activity that signs and publishes the decision, and "
        "then the same broker hop. The inbox latency covers the workflow starting, its first activity publishing "
        "the request, the service's inbox and the SSE push.",
    ]
    report = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"approval-latency-{datetime.now(UTC):%Y-%m-%d}.md"
    out.write_text(report)
    print(report)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
