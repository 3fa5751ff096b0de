"""Tampering with the stored trail, each kind, on SQLite and PostgreSQL: verification names the first bad
record and what happened to it, and a history rewritten with recomputed hashes is caught by checkpoints
held outside the database."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import insert, text

from caduceus_audit import AuditStore
from caduceus_audit.adapters.store import chained_row
from caduceus_audit.adapters.tables import RECORDS
from caduceus_audit.domain.chain import link_hash
from caduceus_audit.domain.checkpoints import checkpoint_for
from caduceus_audit.testing import T0, checkpoint, entry, keyring
from caduceus_audit.verify import HeldCheckpoint, verify_trail
from caduceus_contracts import AuditCheckpointed, SignedCheckpoint, Signer


@pytest.fixture()
def store(db_url: str) -> Iterator[AuditStore]:
    """acme: 12 records with a checkpoint of 1..8 in the database; globex: 3 records, untouched."""
    store = AuditStore(db_url)
    store.append_batch([entry("acme", n) for n in range(1, 13)] + [entry("globex", n) for n in range(1, 4)])
    store.checkpoints.add(checkpoint(store, "acme", 0, 8))
    yield store
    store.close()


def sql(store: AuditStore, statement: str, **params: object) -> None:
    with store.engine.begin() as conn:
        conn.execute(text(statement), params)


def rehash_from(store: AuditStore, seq: int) -> None:
    """What an attacker with write access does to hide an edit: recompute every hash from `seq` on."""
    records = store.records(tenant="acme")
    prev_hash = records[seq - 2].hash if seq > 1 else records[0].prev_hash
    for record in records[seq - 1:]:
        record.prev_hash = prev_hash
        record.hash = prev_hash = link_hash(record)
        sql(store, "UPDATE audit_record SET prev_hash = :p, hash = :h WHERE tenant = 'acme' AND seq = :s",
            p=record.prev_hash, h=record.hash, s=record.seq)


def acme(store: AuditStore, outside: list[HeldCheckpoint] | None = None):
    (verdict,) = verify_trail(store, keyring(), tenant="acme", outside=outside or [])
    return verdict


def test_an_untouched_trail_verifies_with_its_checkpoints(store: AuditStore) -> None:
    verdicts = verify_trail(store, keyring())
    assert [(v.tenant, v.ok, v.records) for v in verdicts] == [("acme", True, 12), ("globex", True, 3)]
    assert verdicts[0].checkpoints == 1 and verdicts[0].last_checkpoint_seq == 8


def test_an_edited_record_is_named_as_changed(store: AuditStore) -> None:
    sql(store, "UPDATE audit_record SET body = :b WHERE tenant = 'acme' AND seq = 5", b='{"n":5,"text":"nothing"}')
    verdict = acme(store)
    assert (verdict.ok, verdict.first_bad_seq, verdict.problem, verdict.event_id) == (False, 5, "changed", "acme-5")
    assert "no longer matches its hash" in verdict.reason
    assert verify_trail(store, keyring(), tenant="globex")[0].ok  # another tenant's chain is unaffected


@pytest.mark.parametrize("column", ["session_id", "occurred_at", "recorded_at", "trace_id", "rejected"])
def test_every_stored_column_is_covered_by_the_hash(store: AuditStore, column: str) -> None:
    value = {"session_id": "hidden", "occurred_at": T0 - timedelta(days=300), "recorded_at": T0,
             "trace_id": "cd" * 16, "rejected": True}[column]
    sql(store, f"UPDATE audit_record SET {column} = :v WHERE tenant = 'acme' AND seq = 4", v=value)
    assert (acme(store).first_bad_seq, acme(store).problem) == (4, "changed")


def test_a_deleted_record_is_named_as_missing(store: AuditStore) -> None:
    sql(store, "DELETE FROM audit_record WHERE tenant = 'acme' AND seq = 5")
    verdict = acme(store)
    assert (verdict.first_bad_seq, verdict.problem) == (5, "missing")
    assert "jumps from 4 to 6" in verdict.reason


@pytest.mark.parametrize("at", [5, 10], ids=["checkpointed", "after-the-checkpoint"])
def test_an_inserted_record_is_named_even_with_a_correct_hash_of_its_own(store: AuditStore, at: int) -> None:
    # Make room (numbers shifted up, hashes left as they were), then insert a well-formed forged record there.
    sql(store, "UPDATE audit_record SET seq = seq + 1000 WHERE tenant = 'acme' AND seq >= :at", at=at)
    sql(store, "UPDATE audit_record SET seq = seq - 999 WHERE tenant = 'acme' AND seq >= 1000")
    prev_hash = store.records(tenant="acme")[at - 2].hash
    forged = chained_row(replace(entry("acme", 99), event_id="forged"), at, prev_hash, T0)
    with store.engine.begin() as conn:
        conn.execute(insert(RECORDS), [forged])
    verdict = acme(store)
    assert (verdict.first_bad_seq, verdict.problem, verdict.event_id) == (at, "inserted", "forged")


def test_swapped_records_are_named_as_reordered(store: AuditStore) -> None:
    sql(store, "UPDATE audit_record SET seq = -1 WHERE tenant = 'acme' AND seq = 5")
    sql(store, "UPDATE audit_record SET seq = 5 WHERE tenant = 'acme' AND seq = 6")
    sql(store, "UPDATE audit_record SET seq = 6 WHERE tenant = 'acme' AND seq = -1")
    verdict = acme(store)
    assert (verdict.first_bad_seq, verdict.problem, verdict.event_id) == (5, "reordered", "acme-6")


def test_deleting_the_newest_records_is_caught_by_the_checkpoint(store: AuditStore) -> None:
    sql(store, "DELETE FROM audit_record WHERE tenant = 'acme' AND seq >= 7")
    verdict = acme(store)
    assert (verdict.first_bad_seq, verdict.problem) == (7, "truncated")
    assert "records 7..8 were deleted" in verdict.reason


def test_a_rewrite_with_recomputed_hashes_is_caught_by_the_checkpoint_in_the_database(store: AuditStore) -> None:
    sql(store, "UPDATE audit_record SET body = :b WHERE tenant = 'acme' AND seq = 3", b='{"n":3,"text":"rewritten"}')
    rehash_from(store, 3)
    verdict = acme(store)
    assert (verdict.first_bad_seq, verdict.problem) == (3, "changed")
    assert "rewritten" in verdict.reason


def test_a_rewrite_that_also_deletes_the_checkpoints_is_caught_by_checkpoints_held_outside(store: AuditStore) -> None:
    exported = [HeldCheckpoint("checkpoints.jsonl", event) for event in store.checkpoints.events("acme")]
    sql(store, "UPDATE audit_record SET body = :b WHERE tenant = 'acme' AND seq = 3", b='{"n":3,"text":"rewritten"}')
    rehash_from(store, 3)
    sql(store, "DELETE FROM audit_checkpoint")
    assert acme(store).ok  # internally consistent: the database alone cannot tell ...
    verdict = acme(store, exported)  # ... the checkpoint someone kept can
    assert (verdict.ok, verdict.first_bad_seq, verdict.problem) == (False, 3, "changed")


def test_a_checkpoint_not_signed_by_the_audit_key_is_named_as_forged(store: AuditStore) -> None:
    mallory = Signer("audit", Signer.generate("audit").private_key)  # right name, wrong key
    forged = SignedCheckpoint.issue(mallory, checkpoint_for("acme", 8, store.hashes("acme", 8, 12), T0))
    store.checkpoints.add(AuditCheckpointed.of(forged))
    verdict = acme(store)
    assert (verdict.ok, verdict.first_bad_seq, verdict.problem) == (False, 12, "forged checkpoint")
    assert "the database" in verdict.reason


def test_a_tenant_whose_records_and_checkpoints_were_all_deleted_is_caught_from_outside(store: AuditStore) -> None:
    exported = [HeldCheckpoint("the bus", event) for event in store.checkpoints.events()]
    sql(store, "DELETE FROM audit_record WHERE tenant = 'acme'")
    sql(store, "DELETE FROM audit_checkpoint")
    verdicts = {v.tenant: v for v in verify_trail(store, keyring(), outside=exported)}
    assert (verdicts["acme"].first_bad_seq, verdicts["acme"].problem) == (1, "truncated")

