"""Workspace leases on a real nats-server: one holder at a time, renewal keeps it, expiry hands it over, and a
holder cut off from the bucket gives the workspace up before anyone else can take it."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from caduceus_broker.lease import FENCE_FRACTION, Leases
from caduceus_bus import BusSettings, EventConnection

pytestmark = pytest.mark.timeout(60)
# Every test binds the same bucket (its max age is set once, by whoever creates it first).
TTL_S = 2.0


@pytest.fixture()
async def replicas(nats_server):
    """Make a broker replica's leases on its own connection; a workspace of the test's own."""
    opened: list[EventConnection] = []
    lost: list[tuple[str, str, str, float]] = []

    async def make(owner: str) -> tuple[Leases, EventConnection]:
        conn = await EventConnection.connect(BusSettings(nats_url=nats_server.url), f"lease-{owner}")
        opened.append(conn)

        async def on_lost(tenant: str, workspace: str, reason: str) -> None:
            lost.append((owner, workspace, reason, time.monotonic()))

        return await Leases.open(conn.js, owner, TTL_S, on_lost=on_lost), conn

    yield make, lost, f"ws{uuid.uuid4().hex[:8]}"
    for conn in opened:
        if not conn.nc.is_closed:
            await conn.close()


async def take_when_free(leases: Leases, workspace: str, timeout: float = 10.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await leases.acquire("acme", workspace):
            return time.monotonic()
        await asyncio.sleep(0.05)
    raise AssertionError(f"{leases.owner} could not take {workspace} within {timeout} s")


async def test_one_holder_renewal_keeps_it_and_expiry_hands_it_over(replicas) -> None:
    make, lost, workspace = replicas
    (a, _), (b, _) = await make("broker-a"), await make("broker-b")
    assert await a.acquire("acme", workspace)
    assert not await b.acquire("acme", workspace)
    assert await b.holder("acme", workspace) == "broker-a"
    assert a.owns("acme", workspace) and not b.owns("acme", workspace)
    # Renewed for longer than its TTL: nobody else can take it.
    until = time.monotonic() + TTL_S * 2
    while time.monotonic() < until:
        await a.renew()
        last_renewal = time.monotonic()
        assert not await b.acquire("acme", workspace)
        await asyncio.sleep(TTL_S / 4)
    # A stops renewing (as a killed broker would): about one TTL after its last renewal B takes it.
    taken_at = await take_when_free(b, workspace)
    assert TTL_S * 0.8 < taken_at - last_renewal < TTL_S + 3
    assert await a.holder("acme", workspace) == "broker-b"
    # A's next renewal finds the key written by B: A lets the workspace go and says why.
    await a.renew()
    assert not a.owns("acme", workspace)
    assert [(owner, ws) for owner, ws, _, _ in lost] == [("broker-a", workspace)]
    assert "another broker" in lost[0][2]


async def test_a_holder_cut_off_from_the_bucket_gives_up_before_another_can_take_over(replicas) -> None:
    make, lost, workspace = replicas
    (a, a_conn), (b, _) = await make("broker-a"), await make("broker-b")
    assert await a.acquire("acme", workspace)
    acquired = time.monotonic()
    await a_conn.nc.close()  # A can no longer reach NATS: its renewals fail
    keeping = asyncio.create_task(a.keep())
    try:
        taken_at = await take_when_free(b, workspace)
    finally:
        keeping.cancel()
    assert [(owner, ws) for owner, ws, _, _ in lost] == [("broker-a", workspace)]
    given_up_at = lost[0][3]
    # A stopped acting as the owner (its pair is stopped by the broker) before B could start one.
    assert given_up_at < taken_at
    assert given_up_at - acquired < TTL_S * FENCE_FRACTION + TTL_S / 4 + 0.5
    assert not a.owns("acme", workspace) and b.owns("acme", workspace)


async def test_a_released_lease_is_taken_at_once(replicas) -> None:
    make, _, workspace = replicas
    (a, _), (b, _) = await make("broker-a"), await make("broker-b")
    assert await a.acquire("acme", workspace)
    await a.release("acme", workspace)
    started = time.monotonic()
    assert await b.acquire("acme", workspace)  # no waiting for the TTL after a graceful stop
    assert time.monotonic() - started < 1.0


async def test_only_the_first_replica_answers_something_every_replica_sees(replicas) -> None:
    make, _, workspace = replicas
    (a, _), (b, _) = await make("broker-a"), await make("broker-b")
    answers = await asyncio.gather(*(leases.once(f"refused.{workspace}") for leases in (a, b, a, b)))
    assert sorted(answers) == [False, False, False, True]
