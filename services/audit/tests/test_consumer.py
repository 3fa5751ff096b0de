"""The audit consumer against the real nats-server and both SQL backends: every event stored once, in
order, chained; duplicates and redeliveries stored once; malformed messages kept as rejected; a killed
consumer loses and duplicates nothing; an unavailable database pauses consumption without acknowledging."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from caduceus_audit import AuditStore
from caduceus_audit.adapters.stream import CONSUMER_NAME
from caduceus_audit.app import build
from caduceus_audit.testing import (
    AWS,
    TENANTS,
    async_equals,
    eventually,
    flow,
    publisher,
    quick_settings,
    redelivered_after_commit,
    running,
    spawn_audit,
    stored_count,
    wait_healthy,
)
from caduceus_contracts import ChatMessageIn, Event, TurnRequested, subjects

pytestmark = pytest.mark.timeout(90)



def assert_chains_hold(store: AuditStore, published: list[tuple[str, Event]]) -> None:
    """Every published event stored exactly once, per tenant in publish order, seq 1..n, chain intact."""
    records = store.records()
    assert len(records) == len(published)
    assert len({r.event_id for r in records}) == len(records)
    for tenant in {event.tenant for _, event in published}:
        expected = [event.event_id for _, event in published if event.tenant == tenant]
        chain = store.records(tenant=tenant)
        assert [r.event_id for r in chain] == expected
        assert [r.seq for r in chain] == list(range(1, len(expected) + 1))
        assert store.verify_chain(tenant).ok, store.verify_chain(tenant)


async def test_every_event_is_stored_once_in_order_with_an_intact_chain(db_url: str, fresh_nats, tmp_path: Path):
    published = flow(80)
    store = AuditStore(db_url)
    async with publisher(fresh_nats.url) as conn:
        for subject, event in published[:60]:  # a backlog waiting before audit starts ...
            await conn.publish(subject, event)
        async with running(build(quick_settings(fresh_nats.url, db_url, tmp_path))):
            for subject, event in published[60:]:  # ... and events arriving while it runs
                await conn.publish(subject, event)
            await eventually(async_equals(stored_count(store), 80), what="80 records")
            info = await conn.js.consumer_info("CADUCEUS", CONSUMER_NAME)
            assert info.num_ack_pending == 0 and info.num_pending == 0
    assert_chains_hold(store, published)
    everything = " ".join(r.body for r in store.records())
    assert AWS not in everything and "oidc-token-" not in everything and "hunter" not in everything
    chat = json.loads(store.records(tenant="acme")[0].body)
    assert chat["token"] == "[REDACTED]" and "[REDACTED:aws_access_key]" in chat["text"]
    turn = next(r for r in store.records(tenant="acme") if r.kind == "turn.requested")
    sent = next(e for _, e in published if e.event_id == turn.event_id)
    assert isinstance(sent, TurnRequested) and turn.session_id == sent.grant.grant.session_id
    completed = next(r for r in store.records(tenant="globex") if r.kind == "tool.completed")
    assert completed.call_id and completed.session_id
    assert store.count(session_id="s0") == len([e for _, e in published if getattr(e, "session_id", None) == "s0"
                                                or (isinstance(e, TurnRequested) and e.grant.grant.session_id == "s0")])


async def test_duplicate_publish_and_redelivery_are_stored_once(db_url: str, fresh_nats, tmp_path: Path):
    (subject, event), (other_subject, other) = flow(2)
    service = build(quick_settings(fresh_nats.url, db_url, tmp_path))
    async with publisher(fresh_nats.url) as conn:
        await conn.publish(subject, event)
        await conn.publish(subject, event)  # a retried publish: same Nats-Msg-Id, JetStream keeps one
        # The same event re-published after the duplicate window (JetStream cannot tell): audit must.
        await conn.js.publish(subject, event.model_dump_json().encode(), headers={"Nats-Msg-Id": "late-retry"})
        await conn.publish(other_subject, other)
        assert (await conn.js.stream_info("CADUCEUS")).state.messages == 3

        await redelivered_after_commit(service, conn, 3)
    store = AuditStore(db_url)
    assert [r.event_id for r in store.records()] == [event.event_id, other.event_id]
    assert store.verify_chain(event.tenant).ok


async def test_malformed_messages_are_stored_as_rejected_records(db_url: str, fresh_nats, tmp_path: Path):
    globex_message = ChatMessageIn(tenant="globex", session_id="s1", token="t", text="hello")
    (valid_subject, valid), = flow(1)
    store = AuditStore(db_url)
    async with publisher(fresh_nats.url) as conn, running(build(quick_settings(fresh_nats.url, db_url, tmp_path))):
        await conn.js.publish(subjects.chat_in("acme"), b"{not json password=hunter2")
        await conn.js.publish(subjects.tool_requested("acme"),
                              json.dumps({"kind": "tool.exploded", "tenant": "acme", "args": {"key": AWS}}).encode(),
                              headers={"Nats-Msg-Id": "exploded-1"})
        # Speaking for another tenant: kept, under the tenant whose subject it used.
        await conn.js.publish(subjects.chat_in("acme"), globex_message.model_dump_json().encode())
        await conn.js.publish("cad.v1.junk", b"\x00\xff binary junk")
        await conn.publish(valid_subject, valid)  # consumption goes on after bad input
        await eventually(async_equals(stored_count(store), 5), what="5 records")

    records = store.records()
    rejected = [r for r in records if r.rejected]
    assert len(rejected) == 4 and not next(r for r in records if r.event_id == valid.event_id).rejected
    by_subject = {(r.subject, r.kind): r for r in rejected}
    garbage = by_subject[(subjects.chat_in("acme"), "unknown")]
    assert garbage.tenant == "acme" and "malformed" in garbage.reject_reason
    assert "hunter2" not in garbage.body
    exploded = by_subject[(subjects.tool_requested("acme"), "tool.exploded")]
    assert exploded.event_id == "rejected:exploded-1" and AWS not in exploded.body
    forged = by_subject[(subjects.chat_in("acme"), "chat.message.in")]
    assert forged.tenant == "acme" and "globex" in forged.reject_reason
    assert json.loads(forged.body)["token"] == "[REDACTED]"
    junk = by_subject[("cad.v1.junk", "unknown")]
    assert junk.tenant == subjects.SYSTEM_TENANT
    for tenant in store.tenants():
        assert store.verify_chain(tenant).ok


async def test_audit_killed_mid_stream_loses_and_duplicates_nothing(db_url: str, fresh_nats, tmp_path: Path):
    published = flow(300, TENANTS)
    env = {"PYTHONUNBUFFERED": "1", "CADUCEUS_NATS_URL": fresh_nats.url, "CADUCEUS_STATE_DIR": str(tmp_path),
           "CADUCEUS_AUDIT_DB_URL": db_url, "CADUCEUS_AUDIT_BATCH_SIZE": "20", "CADUCEUS_AUDIT_ACK_WAIT_S": "1.5",
           "CADUCEUS_AUDIT_FETCH_TIMEOUT_S": "0.2"}
    log_path = tmp_path / "audit.log"
    store = AuditStore(db_url)
    async with publisher(fresh_nats.url) as conn:
        first = spawn_audit(env, log_path)
        second = None
        try:
            await wait_healthy(conn, first, log_path)

            async def publish_all() -> None:
                for i, (subject, event) in enumerate(published):
                    await conn.publish(subject, event)
                    if i % 10 == 9:
                        await asyncio.sleep(0.01)  # a steady flow, not one burst
            flowing = asyncio.create_task(publish_all())
            await eventually(lambda: _at_least(store, 60), what="audit to be mid-stream")
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            stored_at_kill = store.count()
            assert stored_at_kill < len(published), "the kill came too late to test anything"

            second = spawn_audit(env, log_path)
            await wait_healthy(conn, second, log_path)
            await flowing
            await eventually(async_equals(stored_count(store), len(published)), timeout=30, what="every event")
            # Everything delivered is acknowledged: nothing is left for JetStream to deliver again later.
            await eventually(all_settled(conn), what="every delivery acknowledged")
        finally:
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(15)
    assert second.returncode == 0, log_path.read_text()[-3000:]
    assert_chains_hold(store, published)


def all_settled(conn):  # an EventConnection
    async def check() -> bool:
        info = await conn.js.consumer_info("CADUCEUS", CONSUMER_NAME)
        return info.num_ack_pending == 0 and info.num_pending == 0
    return check


async def _at_least(store: AuditStore, n: int) -> bool:
    return await asyncio.to_thread(store.count) >= n


async def test_unavailable_database_pauses_consumption_without_acknowledging(postgres_server, fresh_nats,
                                                                             tmp_path: Path):
    name = f"audit_outage_{os.getpid()}_{int(time.time())}"
    admin = create_engine(postgres_server.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as sql:
        sql.execute(text(f'CREATE DATABASE "{name}"'))
    db_url = make_url(postgres_server.url).set(database=name).render_as_string(hide_password=False)
    published = flow(20)
    store = AuditStore(db_url)
    try:
        async with publisher(fresh_nats.url) as conn, running(build(quick_settings(fresh_nats.url, db_url, tmp_path))):
            for subject, event in published[:10]:
                await conn.publish(subject, event)
            await eventually(async_equals(stored_count(store), 10), what="first 10 records")
            store.close()

            with admin.connect() as sql:  # the database goes away
                sql.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
                sql.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db"),
                            {"db": name})
            for subject, event in published[10:]:
                await conn.publish(subject, event)
            async def took_later_ones() -> bool:  # the service has some of the later ten in hand
                return (await conn.js.consumer_info("CADUCEUS", CONSUMER_NAME)).delivered.stream_seq > 10
            await eventually(took_later_ones, what="later messages delivered to the service")
            info = await conn.js.consumer_info("CADUCEUS", CONSUMER_NAME)
            assert info.ack_floor.stream_seq == 10  # nothing after the outage acknowledged ...
            assert info.num_ack_pending + info.num_pending == 10  # ... and nothing dropped

            with admin.connect() as sql:  # the database comes back: consumption resumes by itself
                sql.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
            await eventually(async_equals(stored_count(store), 20), what="all 20 records after the outage")
        assert_chains_hold(store, published)
    finally:
        store.close()
        with admin.connect() as sql:
            sql.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
