"""Two real broker processes on one bus: exactly one owns a workspace (one planner), and when the owner is killed
with kill -9 under governed calls the other takes the workspace over within a bound: every call answered, none
executed twice, the dead owner's sandboxes gone with it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from caduceus_bus import EventConnection
from caduceus_embedded.ports import StackPorts
from caduceus_embedded.services import RunningService, start_service
from caduceus_embedded.stack import EmbeddedStack

sys.path.insert(0, str(Path(__file__).parent))  # the suite imports in importlib mode: the shared harness
from ha_harness import GovernedLoad, stored_equals_stream

pytestmark = pytest.mark.timeout(300)
LEASE_TTL_S = 4.0
# From the kill to the survivor holding the lease: the TTL, one watch interval, a margin for a busy machine.
TAKEOVER_BOUND_S = LEASE_TTL_S + 8.0


@pytest.fixture()
def two_brokers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The embedded stack (its broker is replica one) and a second broker process on the same bus and state."""
    monkeypatch.setenv("CADUCEUS_LEASE_TTL_S", str(LEASE_TTL_S))
    monkeypatch.setenv("CADUCEUS_AUDIT_CHECKPOINT_INTERVAL_S", "1")
    monkeypatch.delenv("CADUCEUS_MODEL_BASE_URL", raising=False)
    stack = EmbeddedStack(tmp_path / "state", StackPorts.free())
    stack.start()
    second: RunningService | None = None
    try:
        spec = stack.services["broker"].spec
        # No health port of its own (0): the stack's broker holds the one in the spec.
        spec = dataclasses.replace(spec, env={**spec.env, "CADUCEUS_HTTP_PORT": "0"})
        second = start_service(spec, stack.service_env(spec), stack.layout.logs / "broker-2.log")
        wait_until_ready(stack, second)
        yield stack, second
    finally:
        if second is not None:
            second.terminate()
            try:
                second.process.wait(15)
            except Exception:
                second.kill()
        stack.stop()


def wait_until_ready(stack: EmbeddedStack, second: RunningService, timeout: float = 60.0) -> None:
    """Both replicas answer `caduceus.health.broker` (the second one said so in its log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert second.exit_code() is None, second.log_path.read_text()[-3000:]
        if "broker ready" in second.log_path.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"the second broker did not become ready: {second.log_path.read_text()[-3000:]}")


async def _holder(stack: EmbeddedStack) -> str | None:
    conn = await EventConnection.connect(stack.bus_settings("operator"), "lease-test", role="operator")
    try:
        kv = await conn.js.key_value("caduceus_broker_leases")
        try:
            entry = await kv.get("acme.default")
        except Exception:
            return None
        return json.loads(entry.value)["broker"] if entry.value else None
    finally:
        await conn.nc.close()


def holder_pid(stack: EmbeddedStack) -> int | None:
    """The pid of the broker holding acme/default's lease (its id is host-pid-random)."""
    holder = asyncio.run(_holder(stack))
    return int(holder.rsplit("-", 2)[1]) if holder else None


def parents() -> dict[int, int]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return found


def descendants(pid: int) -> set[int]:
    tree = parents()
    out, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in tree.items() if parent in frontier} - out
        out |= frontier
    return out


def planners_under(pid: int) -> int:
    """Planner processes a broker runs (in their sandboxes, below it in the process tree)."""
    count = 0
    for child in descendants(pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        count += argv[1:3] == [b"-m", b"caduceus_broker.planner"]  # the planner itself, not its bwrap or launcher
    return count


def chat_turn(stack: EmbeddedStack, text: str = "noop") -> str:
    from caduceus_client import ChatClient
    from caduceus_identity.devtoken import mint_dev_token

    async def send() -> str:
        client = await ChatClient.connect(stack.info.bus_settings("client"))
        try:
            token = mint_dev_token(stack.info.dev_issuer_url, "acme", "bob")
            return (await client.send(tenant="acme", token=token, text=text, timeout=120)).reply.status
        finally:
            await client.close()

    return asyncio.run(send())


def test_two_brokers_one_owner_and_a_takeover_within_seconds_when_the_owner_is_killed(two_brokers):
    stack, second = two_brokers
    load = GovernedLoad(stack)
    load.start()  # a first chat turn: both replicas see it, one takes the workspace's lease and starts its pair
    took_over: dict[str, float] = {}
    try:
        owner = holder_pid(stack)
        brokers = {stack.services["broker"].pid, second.pid}
        assert owner in brokers, (owner, brokers)
        other = (brokers - {owner}).pop()
        # More turns, wherever they land: the owner runs them all on its one planner; the other starts none.
        assert [chat_turn(stack) for _ in range(2)] == ["ok", "ok"]
        assert (planners_under(owner), planners_under(other)) == (1, 0)
        before = load.tally(load.run(2, concurrency=2))
        assert before.ok == before.sent > 0, before
        sandboxes = descendants(owner)
        assert sandboxes, "the owner runs no sandbox"

        def kill_the_owner() -> None:
            os.kill(owner, signal.SIGKILL)
            killed_at = time.monotonic()
            while time.monotonic() - killed_at < TAKEOVER_BOUND_S + 20:
                holder = holder_pid(stack)
                if holder is not None and holder != owner:
                    took_over["s"], took_over["by"] = time.monotonic() - killed_at, holder
                    return
                time.sleep(0.2)

        during = load.tally(load.run(12, concurrency=2, during=kill_the_owner))
        after = load.tally(load.run(3, concurrency=2))
    finally:
        load.close()
    assert took_over, "no broker took the workspace over after its owner was killed"
    assert took_over["s"] < TAKEOVER_BOUND_S, took_over
    # Every call got an answer, none waited for the gateway's own timeout, none ran twice.
    assert during.answered == during.sent, during
    assert during.slowest_s < TAKEOVER_BOUND_S + 30, during
    assert before.executed_twice == during.executed_twice == after.executed_twice == 0
    assert after.ok == after.sent > 0, f"calls after the takeover did not all run: {after}"
    # The dead owner's sandboxes died with it; the new owner runs the workspace's only planner.
    alive = [pid for pid in sandboxes if Path(f"/proc/{pid}").exists()
             and b"caduceus_broker" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert not alive, f"processes of the killed broker still run: {alive}"
    live_brokers = {stack.services["broker"].pid, second.pid} - {owner}
    assert sum(planners_under(pid) for pid in live_brokers) == 1
    assert planners_under(took_over["by"]) == 1
    in_stream, stored = stored_equals_stream(stack)
    assert in_stream == stored, f"{in_stream} events in the stream, {stored} stored by audit"
