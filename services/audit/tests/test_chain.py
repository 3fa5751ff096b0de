"""The per-tenant hash chain: how records link, what their hash is over, and concurrent writers keeping one chain."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from caduceus_audit import AuditStore
from caduceus_audit.domain.chain import GENESIS_HASH, record_hash, timestamp_text
from caduceus_audit.domain.entries import AuditEntry
from caduceus_contracts import canonical_json


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
    assert store.verify_chain("acme").as_tuple() == (True, None, "chain of tenant 'acme' intact: 5 records")
    assert store.verify_chain("globex").ok
    assert store.count(session_id="s1") == 5 and store.tenants() == ["acme", "globex"]


@settings(max_examples=300, deadline=None)
@given(text=st.text(), optional=st.one_of(st.none(), st.text()), seq=st.integers(1, 2**53 - 1), flag=st.booleans(),
       moment=st.datetimes(timezones=st.just(UTC)))
def test_the_hand_written_hash_input_is_rfc8785_canonical_json(text, optional, seq, flag, moment) -> None:
    fields = {"tenant": text, "seq": seq, "event_id": text[::-1], "kind": "k" + text, "subject": text * 2,
              "session_id": optional, "call_id": text or None, "trace_id": optional, "occurred_at": moment,
              "recorded_at": moment, "body": text + "\n\u2028\x7f\x00", "rejected": flag, "reject_reason": optional,
              "prev_hash": "f" * 64}
    canonical = {**fields, "occurred_at": timestamp_text(moment), "recorded_at": timestamp_text(moment)}
    assert record_hash(**fields) == hashlib.sha256(canonical_json(canonical)).hexdigest()


def test_an_unreadable_timestamp_is_named_as_a_changed_record(store: AuditStore) -> None:
    tamper(store, "UPDATE audit_record SET occurred_at = 'not a time' WHERE tenant = 'acme' AND seq = 4")
    verdict = store.verify_chain("acme")
    assert (verdict.first_bad_seq, verdict.problem) == (4, "changed")


def test_appending_the_same_events_again_stores_nothing(store: AuditStore) -> None:
    outcome = store.append_batch([entry("acme", 2), entry("acme", 6), entry("acme", 7), entry("acme", 6)])
    assert (outcome.stored, outcome.duplicates) == (2, 2)
    assert [r.event_id for r in store.records(tenant="acme")][-3:] == ["acme-5", "acme-6", "acme-7"]
    assert store.verify_chain("acme").ok


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
    assert writers[0].verify_chain("acme").ok
