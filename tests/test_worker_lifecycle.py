"""A worker that dies mid-turn: the turn fails at once with a reason, the crash is an event, the next turn works."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from caduceus.commands.demo import DEMO_MESSAGE
from caduceus_bus import EventConnection
from caduceus_client import ChatClient
from caduceus_contracts import ToolCallRequested, WorkerLifecycle, parse_event
from caduceus_identity.devtoken import mint_dev_token

pytestmark = pytest.mark.timeout(240)


def planner_of(broker_pid: int, tenant: str) -> int | None:
    """The pid of `tenant`'s planner worker (not its sandbox's launcher) among the broker's descendants."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (cmdline[-3:-1] != [b"-m", b"caduceus_broker.planner"] or b"caduceus_sandbox.inside" in cmdline
                or f"CADUCEUS_TENANT={tenant}".encode() not in environ):
            continue
        pid = int(entry)
        while pid > 1:
            if pid == broker_pid:
                return int(entry)
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return None


async def test_planner_killed_mid_turn_fails_the_turn_cleanly_and_the_next_turn_restarts_it(stack) -> None:
    client = await ChatClient.connect(stack.info.bus_settings("client"))
    conn = await EventConnection.connect(stack.info.bus_settings("client"), "test-worker-crash")
    events: list[WorkerLifecycle] = []
    killed: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def on_lifecycle(msg: Msg) -> None:
        events.append(parse_event(msg.data, expect=WorkerLifecycle))

    async def on_request(msg: Msg) -> None:
        parse_event(msg.data, expect=ToolCallRequested)
        pid = planner_of(stack.services["broker"].pid, "acme")
        if pid is not None and not killed.done():
            os.kill(pid, signal.SIGKILL)  # the planner is in the middle of its turn, waiting for this call
            killed.set_result(pid)

    token = mint_dev_token(stack.info.dev_issuer_url, "acme", "alice")
    warm = await client.send(tenant="acme", token=token, text="hello", timeout=120)  # a running pair to kill
    assert warm.reply.status == "ok"
    await conn.subscribe("cad.v1.worker.lifecycle.acme.>", on_lifecycle)
    await conn.subscribe("cad.v1.tool.requested.acme", on_request)
    failed = await client.send(tenant="acme", token=token, text=DEMO_MESSAGE, watch=True, timeout=60)
    assert killed.done(), "no tool call was requested, so the planner was never killed"
    assert failed.reply.status == "error"
    assert "stopped unexpectedly" in failed.reply.text and "send it again" in failed.reply.text
    crashed = [e for e in events if e.state == "crashed"]
    assert crashed and "planner exited with code" in crashed[0].detail

    after = await client.send(tenant="acme", token=token, text=DEMO_MESSAGE, watch=True, timeout=120)
    assert after.reply.status == "ok"
    started = [e for e in events if e.state == "started" and e.worker_id != crashed[0].worker_id]
    assert {e.role for e in started} == {"planner", "executor"}
    await conn.close()
    await client.close()
