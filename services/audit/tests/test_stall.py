"""The audit stall: the stream holds events audit is not storing (its consumer wedged: paused on the server, so
every fetch times out and nothing is said) and the service notices by itself, says so in its log and in an
audited error event, restarts its pull loop and stores everything."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from caduceus_audit import AuditStore
from caduceus_audit.adapters.stream import CONSUMER_NAME
from caduceus_audit.app import build
from caduceus_audit.settings import AuditSettings
from caduceus_audit.testing import async_equals, eventually, flow, publisher, running, stored_count
from caduceus_contracts import subjects

pytestmark = pytest.mark.timeout(90)


async def test_a_wedged_consumer_is_noticed_said_and_recovered(fresh_nats, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture):
    db_url = f"sqlite:///{tmp_path}/audit.db"
    settings = AuditSettings(nats_url=fresh_nats.url, state_dir=tmp_path, audit_db_url=db_url, audit_batch_size=25,
                             audit_fetch_timeout_s=0.2, audit_ack_wait_s=2.0, audit_retry_max_s=0.5,
                             audit_stall_after_s=1.5)
    published = flow(40)
    store = AuditStore(db_url)
    caplog.set_level(logging.INFO)
    async with publisher(fresh_nats.url) as conn, running(build(settings)):
        for subject, event in published[:20]:
            await conn.publish(subject, event)
        await eventually(async_equals(stored_count(store), 20), what="the first 20 records")

        # The wedge: the consumer answers no fetch any more, and nothing in the service errs.
        until = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        await conn.js.pause_consumer("CADUCEUS", CONSUMER_NAME, until)
        for subject, event in published[20:]:
            await conn.publish(subject, event)

        # Everything published is stored after all, and the stall itself is on the record.
        await eventually(async_equals(stored_count(store), 41), timeout=30, what="every event and the stall event")
        info = await conn.js.consumer_info("CADUCEUS", CONSUMER_NAME)
        assert not info.paused and info.num_pending == 0
    assert sorted(r.event_id for r in store.records() if r.kind != "error") == sorted(e.event_id
                                                                                       for _, e in published)
    (stall,) = [r for r in store.records(tenant=subjects.SYSTEM_TENANT) if r.kind == "error"]
    said = json.loads(stall.body)
    assert said["service"] == "audit" and "audit stalled: 20 events in the stream not stored" in said["reason"]
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("audit stalled" in line for line in logged), logged
    assert any("was paused" in line and "resuming it" in line for line in logged), logged
