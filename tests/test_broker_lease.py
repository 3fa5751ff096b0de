"""Two real broker processes on one bus: exactly one owns a workspace (one planner), and when the owner is killed
with kill -9 under governed calls the other takes the workspace over within a bound: every call answered, none
executed twice, the dead owner's sandboxes gone with it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from caduceus_embedded.ports import StackPorts
from caduceus_embedded.stack import EmbeddedStack

sys.path.insert(0, str(Path(__file__).parent))  # the suite imports in importlib mode: the shared harness
from ha_harness import (
    GovernedLoad,
    descendants,
    holder_pid,
    planners_under,
    start_second_broker,
    stored_equals_stream,
)

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
    second = None
    try:
        second = start_second_broker(stack)
        yield stack, second
    finally:
        if second is not None:
            second.terminate()
            try:
                second.process.wait(15)
            except Exception:
                second.kill()
        stack.stop()


def waiting_for_approval(stack: EmbeddedStack, timeout: float = 60.0) -> bool:
    """Once policy has asked people about a call (the turn that made it waits in its planner)."""
    from caduceus_audit.adapters.store import AuditStore

    store = AuditStore(stack.info.audit_db_url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if any(r.kind == "tool.decided" and '"verdict":"approve"' in r.body.replace(" ", "")
                   for r in store.records(tenant="acme")):
                return True
            time.sleep(0.3)
        return False
    finally:
        store.close()


def chat_reply(stack: EmbeddedStack, text: str) -> tuple[str, str, list]:
    from caduceus_client import ChatClient
    from caduceus_identity.devtoken import mint_dev_token

    async def send() -> tuple[str, str, list]:
        client = await ChatClient.connect(stack.info.bus_settings("client"))
        try:
            token = mint_dev_token(stack.info.dev_issuer_url, "acme", "alice")  # carol may approve
            transcript = await client.send(tenant="acme", token=token, text=text, watch=True, timeout=120)
            return transcript.reply.status, transcript.reply.text, list(transcript.calls.values())
        finally:
            await client.close()

    return asyncio.run(send())


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
        # A turn in the owner's planner, waiting for an approval, when the owner dies: answered, never left hanging.
        waiting_reply: list[tuple[str, str, list]] = []
        waiting = threading.Thread(target=lambda: waiting_reply.append(
            chat_reply(stack, "clean up the build directory")), daemon=True)
        waiting.start()
        assert waiting_for_approval(stack), "the cleanup turn never reached its approval"
        sandboxes = descendants(owner)
        assert sandboxes, "the owner runs no sandbox"

        def kill_the_owner() -> None:
            os.kill(owner, signal.SIGKILL)
            killed_at = time.monotonic()
            # A chat turn sent while the workspace has no live owner: the broker that takes it over runs it.
            turn.start()
            while time.monotonic() - killed_at < TAKEOVER_BOUND_S + 20:
                holder = holder_pid(stack)
                if holder is not None and holder != owner:
                    took_over["s"], took_over["by"] = time.monotonic() - killed_at, holder
                    return
                time.sleep(0.2)

        turn_status: list[str] = []
        turn = threading.Thread(target=lambda: turn_status.append(chat_turn(stack)), daemon=True)
        during = load.tally(load.run(12, concurrency=2, during=kill_the_owner))
        turn.join(120)
        waiting.join(60)
        after = load.tally(load.run(3, concurrency=2))
    finally:
        load.close()
    assert took_over, "no broker took the workspace over after its owner was killed"
    assert took_over["s"] < TAKEOVER_BOUND_S, took_over
    assert turn_status == ["ok"], "the turn sent while the owner was dead was not run by the new owner"
    assert len(waiting_reply) == 1 and waiting_reply[0][0] == "error", waiting_reply
    assert "send it again" in waiting_reply[0][1]
    [waiting_call] = waiting_reply[0][2]  # and its call, waiting for approval, is closed: no approval can run it now
    assert waiting_call.outcome is not None and waiting_call.outcome.status == "error", waiting_call
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
