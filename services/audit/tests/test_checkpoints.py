"""Signed checkpoints from the running audit service, against the real nats-server: made every N records or
T seconds, kept in the database and on the bus, never chained (so an idle trail stays idle), and a forged
checkpoint on the bus is recorded as an attack, not trusted."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from caduceus_audit import AuditStore
from caduceus_audit.adapters.checkpoint_sources import read_bus_checkpoints
from caduceus_audit.app import build
from caduceus_audit.settings import AuditSettings
from caduceus_audit.testing import async_equals, eventually, flow, publisher, running, stored_count
from caduceus_audit.verify import HeldCheckpoint, verify_trail
from caduceus_bus import BusSettings
from caduceus_contracts import (
    AuditCheckpointed,
    ChainCheckpoint,
    SignedCheckpoint,
    Signer,
    load_keyring,
    subjects,
)

pytestmark = pytest.mark.timeout(90)


def settings(nats_url: str, tmp_path: Path, *, every: int, interval_s: float) -> AuditSettings:
    return AuditSettings(nats_url=nats_url, state_dir=tmp_path, audit_db_url=f"sqlite:///{tmp_path}/audit.db",
                         audit_batch_size=25, audit_fetch_timeout_s=0.1, audit_checkpoint_every=every,
                         audit_checkpoint_interval_s=interval_s)


def tiles(checkpoints: list[ChainCheckpoint], head: int) -> bool:
    """The checkpoints of one tenant cover its records 1..head, each range starting where the last ended."""
    ranges = [(c.prev_seq, c.seq) for c in sorted(checkpoints, key=lambda c: c.seq)]
    return bool(ranges) and ranges[0][0] == 0 and ranges[-1][1] == head and all(
        later[0] == earlier[1] for earlier, later in zip(ranges, ranges[1:]))


async def test_checkpoints_cover_every_record_and_an_idle_trail_makes_no_more(fresh_nats, tmp_path: Path):
    published = flow(30)  # acme and globex, 15 each
    store = AuditStore(f"sqlite:///{tmp_path}/audit.db")
    async with publisher(fresh_nats.url) as conn, running(build(settings(fresh_nats.url, tmp_path, every=4,
                                                                          interval_s=0.3))):
        for wave in range(3):  # three bursts, so some checkpoints come from the count and some from the timer
            for subject, event in published[wave * 10:(wave + 1) * 10]:
                await conn.publish(subject, event)
            await eventually(async_equals(stored_count(store), (wave + 1) * 10), what=f"wave {wave}")
        await eventually(lambda: {c.checkpoint.seq for c in store.checkpoints.signed("acme")} >= {15}
                         and {c.checkpoint.seq for c in store.checkpoints.signed("globex")} >= {15},
                         what="checkpoints up to each head")
        await asyncio.sleep(1.0)  # several intervals with nothing new
        settled = len(store.checkpoints.signed())
        await asyncio.sleep(1.0)
        assert len(store.checkpoints.signed()) == settled, "an idle trail kept making checkpoints"
        on_bus = await read_bus_checkpoints(BusSettings(nats_url=fresh_nats.url))

    assert store.count() == 30  # the checkpoints' own events were never appended to a chain
    keyring = load_keyring(tmp_path / "keys")
    for tenant in ("acme", "globex"):
        signed = [c.verify(keyring) for c in store.checkpoints.signed(tenant)]
        assert tiles(signed, head=15), [(c.prev_seq, c.seq) for c in signed]
    assert sorted(e.event_id for e in on_bus) == sorted(e.event_id for e in store.checkpoints.events())
    held = [HeldCheckpoint("the bus", event) for event in on_bus]
    assert all(v.ok and v.last_checkpoint_seq == 15 for v in verify_trail(store, keyring, outside=held))


async def test_a_forged_checkpoint_on_the_bus_is_kept_as_a_rejected_record(fresh_nats, tmp_path: Path):
    store = AuditStore(f"sqlite:///{tmp_path}/audit.db")
    mallory = Signer.generate("audit")
    forged = AuditCheckpointed.of(SignedCheckpoint.issue(mallory, ChainCheckpoint(
        tenant="acme", seq=1, hash="ab" * 32, prev_seq=0, fingerprints="abababab")))
    async with publisher(fresh_nats.url) as conn, running(build(settings(fresh_nats.url, tmp_path, every=1000,
                                                                          interval_s=60))):
        await conn.publish(subjects.audit_checkpoint("acme"), forged)
        await eventually(async_equals(stored_count(store), 1), what="the forged checkpoint recorded")
    (record,) = store.records()
    assert record.rejected and record.kind == "audit.checkpoint"
    assert "not a checkpoint signed by the audit service" in record.reject_reason
    # The only checkpoint kept is the one the stop signed over that rejected record, never mallory's.
    keyring = load_keyring(tmp_path / "keys")
    assert [(c.verify(keyring).seq, c.checkpoint.hash) for c in store.checkpoints.signed()] == [(1, record.hash)]


async def test_a_restarted_service_checkpoints_what_the_last_run_left_unsigned(fresh_nats, tmp_path: Path):
    store = AuditStore(f"sqlite:///{tmp_path}/audit.db")
    published = flow(6)
    async with publisher(fresh_nats.url) as conn:
        async with running(build(settings(fresh_nats.url, tmp_path, every=1000, interval_s=3600))):
            for subject, event in published:
                await conn.publish(subject, event)
            await eventually(async_equals(stored_count(store), 6), what="6 records")
        # A graceful stop signs every head; a run killed with SIGKILL could not: model that by removing them.
        assert {(c.checkpoint.tenant, c.checkpoint.seq) for c in store.checkpoints.signed()} == {("acme", 3),
                                                                                               ("globex", 3)}
        with store.engine.begin() as sql:
            sql.execute(text("DELETE FROM audit_checkpoint"))
        started = time.monotonic()
        async with running(build(settings(fresh_nats.url, tmp_path, every=1000, interval_s=0.3))):
            await eventually(lambda: len(store.checkpoints.signed()) == 2, what="a checkpoint per tenant")
        assert time.monotonic() - started < 10
    assert {(c.checkpoint.tenant, c.checkpoint.seq) for c in store.checkpoints.signed()} == {("acme", 3), ("globex", 3)}


async def test_a_long_unsigned_tail_becomes_checkpoints_of_bounded_size(tmp_path: Path) -> None:
    from caduceus_audit.checkpointing import Checkpointer
    from caduceus_audit.testing import entry

    store = AuditStore(f"sqlite:///{tmp_path}/audit.db")
    store.append_batch([entry("acme", n) for n in range(1, 26)])  # signed by nobody yet (say, before an upgrade)
    published: list[AuditCheckpointed] = []

    async def publish(event: AuditCheckpointed) -> None:
        published.append(event)

    checkpointer = Checkpointer(store, Signer.generate("audit"), publish, every=10, interval_s=3600)
    checkpointer.load()
    assert await checkpointer.tick() == 3
    assert [(e.checkpoint.checkpoint.prev_seq, e.checkpoint.checkpoint.seq) for e in published] == [
        (0, 10), (10, 20), (20, 25)]
    assert await checkpointer.tick() == 0 and len(published) == 3
