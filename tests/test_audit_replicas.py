"""Audit run highly available: two real audit processes on one bus and one database (SQLite and PostgreSQL) store
every event exactly once in its tenant's chain, even when one is killed with SIGKILL mid-batch; and a graceful stop
signs every chain's head, so a tail deleted afterwards is caught by `caduceus audit verify`."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from caduceus.cli import app
from caduceus_audit import AuditStore
from caduceus_audit.app import build
from caduceus_audit.settings import AuditSettings
from caduceus_audit.testing import (
    TENANTS,
    async_equals,
    eventually,
    flow,
    publisher,
    running,
    spawn_audit,
    stored_count,
)

pytestmark = pytest.mark.timeout(120)
runner = CliRunner()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty audit database shared by the replicas: a SQLite file, or a fresh database on real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/audit.db"
        return
    server = request.getfixturevalue("postgres_server")
    name = f"audit_ha_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server.url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def verify(db_url: str, keys_dir: Path, *extra: str):
    return runner.invoke(app, ["audit", "verify", "--db", db_url, "--keys-dir", str(keys_dir), "--json", *extra],
                         catch_exceptions=False)


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


async def ready(proc: subprocess.Popen, log: Path) -> None:
    """Wait for this replica to consume (a health answer may come from another replica)."""
    async def said_ready() -> bool:
        assert proc.poll() is None, f"audit exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        return log.exists() and "audit ready" in log.read_text()
    await eventually(said_ready, timeout=30, what=f"{log.name} ready")


async def _at_least(store: AuditStore, n: int) -> bool:
    return await asyncio.to_thread(store.count) >= n


async def test_two_replicas_store_every_event_once_when_one_is_killed_mid_batch(db_url: str, fresh_nats,
                                                                                tmp_path: Path):
    published = flow(400, TENANTS)
    env = {"PYTHONUNBUFFERED": "1", "CADUCEUS_NATS_URL": fresh_nats.url, "CADUCEUS_STATE_DIR": str(tmp_path),
           "CADUCEUS_AUDIT_DB_URL": db_url, "CADUCEUS_AUDIT_BATCH_SIZE": "10", "CADUCEUS_AUDIT_ACK_WAIT_S": "1.5",
           "CADUCEUS_AUDIT_FETCH_TIMEOUT_S": "0.2", "CADUCEUS_AUDIT_CHECKPOINT_EVERY": "25"}
    logs = [tmp_path / "audit-a.log", tmp_path / "audit-b.log", tmp_path / "audit-c.log"]
    store = AuditStore(db_url)
    procs: list[subprocess.Popen] = []
    try:
        async with publisher(fresh_nats.url) as conn:
            procs = [spawn_audit(env, logs[0]), spawn_audit(env, logs[1])]
            for proc, log in zip(procs, logs, strict=False):
                await ready(proc, log)

            async def publish_all() -> None:
                for i, (subject, event) in enumerate(published):
                    await conn.publish(subject, event)
                    if i % 10 == 9:
                        await asyncio.sleep(0.01)  # a steady flow, both replicas fetching
            flowing = asyncio.create_task(publish_all())
            await eventually(lambda: _at_least(store, 80), what="the replicas to be mid-stream")
            procs[0].send_signal(signal.SIGKILL)  # mid-batch: fetched, maybe committed, not acknowledged
            procs[0].wait(10)
            assert store.count() < len(published), "the kill came too late to test anything"
            procs.append(spawn_audit(env, logs[2]))  # its replacement starts while the survivor carries on
            await ready(procs[2], logs[2])
            await flowing
            await eventually(async_equals(stored_count(store), len(published)), timeout=40, what="every event")
            stream = await conn.js.stream_info("CADUCEUS")
        for proc in procs:
            stop(proc)
        for proc, log in zip(procs[1:], logs[1:], strict=True):
            assert proc.returncode == 0, log.read_text()[-3000:]
        records = store.records()
        # Stored exactly once: as many records as events published, no event id twice, none missing.
        assert len(records) == len(published)
        assert sorted(r.event_id for r in records) == sorted(e.event_id for _, e in published)
        for tenant in {event.tenant for _, event in published}:
            chain = store.records(tenant=tenant)
            assert {r.event_id for r in chain} == {e.event_id for _, e in published if e.tenant == tenant}
            assert [r.seq for r in chain] == list(range(1, len(chain) + 1)), f"{tenant}'s chain has a gap or fork"
        assert stream.state.messages >= len(published)
        checked = verify(db_url, tmp_path / "keys")
        assert checked.exit_code == 0, checked.output
        assert {v["tenant"] for v in json.loads(checked.stdout)["tenants"]} >= set(TENANTS)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        store.close()


async def test_a_tail_deleted_after_a_graceful_stop_is_caught_by_verify(db_url: str, fresh_nats, tmp_path: Path):
    # Checkpoints neither by count nor by time while running: only the stop signs the heads.
    settings = AuditSettings(nats_url=fresh_nats.url, state_dir=tmp_path, audit_db_url=db_url, audit_batch_size=25,
                             audit_fetch_timeout_s=0.2, audit_ack_wait_s=2.0, audit_retry_max_s=0.5,
                             audit_checkpoint_every=10_000, audit_checkpoint_interval_s=3600)
    published = flow(40, TENANTS[:2])
    store = AuditStore(db_url)
    try:
        async with publisher(fresh_nats.url) as conn, running(build(settings)):
            for subject, event in published:
                await conn.publish(subject, event)
            await eventually(async_equals(stored_count(store), len(published)), what="every event")
            assert store.checkpoints.latest() == {}, "checkpointed while running: the test proves nothing"
        heads = store.heads()
        assert store.checkpoints.latest() == {tenant: seq for tenant, (seq, _hash) in heads.items()}
        assert verify(db_url, tmp_path / "keys").exit_code == 0

        victim = TENANTS[0]
        last = heads[victim][0]
        with store.engine.begin() as sql:  # after the stop, someone removes the newest three records
            sql.execute(text("DELETE FROM audit_record WHERE tenant = :t AND seq > :s"), {"t": victim, "s": last - 3})
        found = verify(db_url, tmp_path / "keys")
        assert found.exit_code == 1, found.output
        bad = [v for v in json.loads(found.stdout)["tenants"] if not v["ok"]]
        assert [(v["tenant"], v["problem"], v["first_bad_seq"]) for v in bad] == [(victim, "truncated", last - 2)]
    finally:
        store.close()
