"""Which messages are the same, against the real nats-server and both SQL backends: a redelivery or a re-publish
of one event is stored once, and a new message is stored even when its bytes are those of an earlier one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from caduceus_audit import AuditStore
from caduceus_audit.adapters.stream import CONSUMER_NAME
from caduceus_audit.app import build
from caduceus_audit.testing import (
    async_equals,
    eventually,
    publisher,
    quick_settings,
    redelivered_after_commit,
    running,
    stored_count,
)
from caduceus_contracts import ApprovalAnswered, subjects

pytestmark = pytest.mark.timeout(90)



# An approval answer with a made-up token: what a brute force publishes again and again, byte for byte.
FORGED_ANSWER = ApprovalAnswered(tenant="acme", call_id="c1", digest="0" * 64, answer="approve",
                                 token="guess-1").model_dump_json().encode()


async def test_identical_raw_messages_are_stored_as_separate_records(db_url: str, fresh_nats, tmp_path: Path):
    store = AuditStore(db_url)
    async with publisher(fresh_nats.url) as conn, running(build(quick_settings(fresh_nats.url, db_url, tmp_path))):
        for _attempt in range(3):
            await conn.js.publish(subjects.approval("answered", "acme"), FORGED_ANSWER)
        for _attempt in range(2):
            await conn.js.publish(subjects.chat_in("acme"), b"{not json")
        await eventually(async_equals(stored_count(store), 5), what="every attempt stored")
        async def settled() -> bool:  # everything delivered is acknowledged: nothing can arrive late
            info = await conn.js.consumer_info("CADUCEUS", CONSUMER_NAME)
            return info.num_ack_pending == 0 and info.num_pending == 0
        await eventually(settled, what="every delivery acknowledged")
        assert await asyncio.to_thread(store.count) == 5
    answers = [r for r in store.records(tenant="acme") if r.kind == "approval.answered"]
    assert len(answers) == 3 and len({r.event_id for r in answers}) == 3 and len({r.body for r in answers}) == 1
    assert store.verify_chain("acme").ok


async def test_a_redelivered_message_is_stored_once(db_url: str, fresh_nats, tmp_path: Path):
    service = build(quick_settings(fresh_nats.url, db_url, tmp_path))
    async with publisher(fresh_nats.url) as conn:
        # Two attempts with the same bytes: two messages, each delivered twice below.
        for _attempt in range(2):
            await conn.js.publish(subjects.approval("answered", "acme"), FORGED_ANSWER)
        await conn.js.publish("cad.v1.chat.in.ACME", b"{not json")
        await redelivered_after_commit(service, conn, 3)
    store = AuditStore(db_url)
    assert [r.kind for r in store.records(tenant="acme")] == ["approval.answered"] * 2
    assert len(store.records(tenant=subjects.SYSTEM_TENANT)) == 1
    assert store.verify_chain("acme").ok and store.verify_chain(subjects.SYSTEM_TENANT).ok
