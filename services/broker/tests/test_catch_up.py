"""A broker that starts after its workspace's owner died answers what the dead owner held, even what it never saw.

Two broker services on a real nats-server, one after the other, as `caduceus up` restarts a killed broker: the first
owns the workspace and has given a turn to its planner; it is killed (no lease released); a second turn is sent
while no broker runs; a fresh broker starts. It knows neither turn from its own subscriptions (both were published
before it started), so it reads them back from the stream: once the dead owner's lease lapses, the turn the dead
planner held gets an error reply and the turn nobody saw is run. Pairs are fakes (no sandboxes): what is tested is
who answers which turn.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

import pytest

from caduceus_broker import app as broker_app
from caduceus_broker.app import BrokerApp
from caduceus_broker.settings import BrokerSettings, ModelSettings
from caduceus_broker.workers import Worker
from caduceus_bus import BusSettings, EventConnection
from caduceus_contracts import (
    ChatReply,
    SessionGrant,
    SignedGrant,
    TurnAssigned,
    TurnRequested,
    ensure_signer,
    new_id,
    parse_event,
    subjects,
    utcnow,
)

pytestmark = pytest.mark.timeout(60)
LEASE_TTL_S = 2.0


class FakePool:
    """A worker pool whose pairs are records: `ensure` "starts" one, nothing runs."""

    def __init__(self, *_args, **_kwargs) -> None:
        self.workers: dict[tuple[str, str], Worker] = {}

    async def ensure(self, tenant: str, workspace: str) -> Worker:
        return self.workers.setdefault((tenant, workspace), Worker(tenant, workspace, new_id()[:12]))

    def find(self, tenant: str, workspace: str) -> Worker | None:
        return self.workers.get((tenant, workspace))

    async def watch(self) -> None:
        await asyncio.Event().wait()

    async def retire(self, worker: Worker, state: str, detail: str) -> None:
        self.workers.pop((worker.tenant, worker.workspace), None)

    async def stop_all(self) -> None:
        self.workers.clear()


async def start_broker(nats_url: str, state: Path) -> BrokerApp:
    broker = BrokerApp(BrokerSettings(state_dir=state, lease_ttl_s=LEASE_TTL_S),
                       BusSettings(nats_url=nats_url), ModelSettings())
    await broker.start()
    return broker


async def kill(broker: BrokerApp) -> None:
    """As kill -9 does: nothing released, nothing answered; the lease lapses by itself."""
    for task in broker._tasks:
        task.cancel()
    assert broker.connection is not None
    await broker.connection.nc.close()


def turn(state: Path, text: str) -> TurnRequested:
    now = utcnow()
    grant = SignedGrant.issue(ensure_signer(state / "keys", "identity"), SessionGrant(
        tenant="acme", workspace="default", user="alice", roles=("member",), channel="test",
        session_id="s-alice", issued_at=now, expires_at=now + timedelta(hours=1)))
    return TurnRequested(tenant="acme", message_id=new_id(), grant=grant, text=text)


async def until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.05)


async def test_a_broker_started_after_the_owner_died_answers_the_turns_it_never_saw(
        fresh_nats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker_app, "WorkerPool", FakePool)
    ensure_signer(tmp_path / "keys", "identity")
    client = await EventConnection.connect(BusSettings(nats_url=fresh_nats.url), "test-client")
    replies: list[ChatReply] = []
    assigned: list[TurnAssigned] = []

    async def collect(msg) -> None:
        event = parse_event(msg.data, subject=msg.subject)
        (replies if isinstance(event, ChatReply) else assigned).append(event)

    await client.nc.subscribe(subjects.CHAT_REPLY_ALL, cb=collect)
    await client.nc.subscribe(subjects.TURN_ASSIGNED_ALL, cb=collect)
    first = await start_broker(fresh_nats.url, tmp_path)
    restarted = None
    try:
        answered, held = turn(tmp_path, "answered before the kill"), turn(tmp_path, "held by the dead planner")
        for sent in (answered, held):
            await client.publish(subjects.turn_requested("acme"), sent)
        await until(lambda: len(assigned) == 2, 10, "the owner gives both turns to its planner")
        await client.publish(subjects.chat_reply("acme", "s-alice"), ChatReply(
            tenant="acme", message_id=answered.message_id, session_id="s-alice", status="ok", text="done"))
        await asyncio.sleep(0.3)
        await kill(first)
        unseen = turn(tmp_path, "sent while no broker ran")
        await client.publish(subjects.turn_requested("acme"), unseen)

        restarted = await start_broker(fresh_nats.url, tmp_path)
        assert restarted.handlers is not None
        # The dead owner's lease lapses within its TTL, the lease watch looks every second.
        await until(lambda: any(r.message_id == held.message_id for r in replies)
                    and any(a.message_id == unseen.message_id for a in assigned), LEASE_TTL_S + 8,
                    "the new owner answers the held turn and runs the unseen one")
        await asyncio.sleep(1.0)  # room for a wrong second answer
        held_replies = [r for r in replies if r.message_id == held.message_id]
        assert [r.status for r in held_replies] == ["error"]
        assert "send it again" in held_replies[0].text
        new_worker = restarted.handlers.pool.find("acme", "default")
        assert new_worker is not None
        assert [a.worker_id for a in assigned if a.message_id == unseen.message_id] == [new_worker.worker_id]
        # The turn answered before the kill is neither run again nor answered again.
        assert [a.message_id for a in assigned].count(answered.message_id) == 1
        assert [r.message_id for r in replies].count(answered.message_id) == 1
    finally:
        if restarted is not None:
            await restarted.stop()
        if first.connection is not None and not first.connection.nc.is_closed:
            await first.stop()
        await client.close()
