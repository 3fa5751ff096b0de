"""The per-tenant hash chain: recomputing it finds the first record that was changed, removed or moved."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from caduceus_audit import AuditStore
from caduceus_audit.domain.chain import GENESIS_HASH
from caduceus_audit.domain.entries import AuditEntry


def entry(tenant: str, n: int, session: str | None = "s1") -> AuditEntry:
    return AuditEntry(tenant=tenant, event_id=f"{tenant}-{n}", kind="chat.reply", subject=f"cad.v1.chat.reply.{tenant}.s1",
                      session_id=session, call_id=None, occurred_at=datetime.now(UTC), body=f'{{"n":{n}}}')


@pytest.fixture()
def store(tmp_path: Path) -> AuditStore:
    store = AuditStore(f"sqlite:///{tmp_path}/audit.db")
    store.append_batch([entry("acme", n) for n in range(1, 6)] + [entry("globex", n, None) for n in range(1, 4)])
    return store


def tamper(store: AuditStore, sql: str, **params: object) -> None:
    with store.engine.begin() as conn:
        conn.execute(text(sql), params)


def test_chains_start_at_genesis_and_link_each_record(store: AuditStore) -> None:
    acme = store.records(tenant="acme")
    assert [r.seq for r in acme] == [1, 2, 3, 4, 5]
    assert acme[0].prev_hash == GENESIS_HASH
    assert all(later.prev_hash == earlier.hash for earlier, later in zip(acme, acme[1:]))
    assert store.verify_chain("acme") == (True, None, "chain of tenant 'acme' intact: 5 records")
    assert store.verify_chain("globex")[0] is True
    assert store.count(session_id="s1") == 5 and store.tenants() == ["acme", "globex"]


def test_changed_body_is_located(store: AuditStore) -> None:
    tamper(store, "UPDATE audit_record SET body = :body WHERE tenant = 'acme' AND seq = 3", body='{"n":999}')
    ok, bad_seq, reason = store.verify_chain("acme")
    assert (ok, bad_seq) == (False, 3)
    assert "changed" in reason
    assert store.verify_chain("globex")[0] is True  # another tenant's chain is unaffected


def test_changed_body_with_recomputed_hash_breaks_the_next_link(store: AuditStore) -> None:
    from caduceus_audit.domain.chain import record_hash

    record = store.records(tenant="acme")[1]
    forged = record_hash(tenant="acme", seq=2, event_id=record.event_id, kind=record.kind, subject=record.subject,
                         body='{"n":0}', prev_hash=record.prev_hash)
    tamper(store, "UPDATE audit_record SET body = :body, hash = :hash WHERE tenant = 'acme' AND seq = 2",
           body='{"n":0}', hash=forged)
    assert store.verify_chain("acme")[:2] == (False, 3)


def test_deleted_record_is_located(store: AuditStore) -> None:
    tamper(store, "DELETE FROM audit_record WHERE tenant = 'acme' AND seq = 4")
    assert store.verify_chain("acme")[:2] == (False, 4)


def test_swapped_records_are_located(store: AuditStore) -> None:
    tamper(store, "UPDATE audit_record SET seq = -1 WHERE tenant = 'acme' AND seq = 2")
    tamper(store, "UPDATE audit_record SET seq = 2 WHERE tenant = 'acme' AND seq = 3")
    tamper(store, "UPDATE audit_record SET seq = 3 WHERE tenant = 'acme' AND seq = -1")
    assert store.verify_chain("acme")[:2] == (False, 2)


def test_appending_the_same_events_again_stores_nothing(store: AuditStore) -> None:
    outcome = store.append_batch([entry("acme", 2), entry("acme", 6), entry("acme", 7), entry("acme", 6)])
    assert (outcome.stored, outcome.duplicates) == (2, 2)
    assert [r.event_id for r in store.records(tenant="acme")][-3:] == ["acme-5", "acme-6", "acme-7"]
    assert store.verify_chain("acme")[0] is True


def test_two_stores_appending_to_one_database_keep_one_chain(tmp_path: Path) -> None:
    import threading

    url = f"sqlite:///{tmp_path}/shared.db"
    writers = [AuditStore(url), AuditStore(url)]

    def append(store: AuditStore, start: int) -> None:
        for n in range(start, start + 40, 2):
            store.append_batch([entry("acme", n)])

    threads = [threading.Thread(target=append, args=(writers[i], i)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert writers[0].count(tenant="acme") == 40
    assert [r.seq for r in writers[0].records(tenant="acme")] == list(range(1, 41))
    assert writers[0].verify_chain("acme")[0] is True
