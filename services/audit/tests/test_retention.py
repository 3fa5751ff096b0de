"""Retention on SQLite and PostgreSQL: archiving old records up to a signed checkpoint keeps the database's
chain verifiable from there, the archive file verifies on its own, and neither can be doctored unnoticed."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from caduceus_audit import AuditStore
from caduceus_audit.retention import RetentionError, archive_before, verify_archive
from caduceus_audit.testing import T0, checkpoint, entry, keyring
from caduceus_audit.verify import verify_trail
from caduceus_contracts import subjects


@pytest.fixture()
def store(db_url: str) -> Iterator[AuditStore]:
    """acme: records 1..12, one second apart from T0+1s, checkpointed at 4 and 8."""
    store = AuditStore(db_url)
    store.append_batch([entry("acme", n) for n in range(1, 13)])
    store.checkpoints.add(checkpoint(store, "acme", 0, 4))
    store.checkpoints.add(checkpoint(store, "acme", 4, 8))
    yield store
    store.close()


def test_archiving_keeps_the_chain_verifiable_from_the_checkpoint(store: AuditStore, tmp_path: Path) -> None:
    archived = archive_before(store, keyring(), "acme", T0 + timedelta(seconds=10), tmp_path / "archive")
    assert archived is not None and (archived.from_seq, archived.through_seq) == (1, 8)
    assert [r.seq for r in store.records(tenant="acme")] == [9, 10, 11, 12]
    (verdict,) = verify_trail(store, keyring())
    assert verdict.ok and verdict.archived_through == 8 and verdict.records == 4, verdict
    file_verdict = verify_archive(Path(archived.location), keyring())
    assert file_verdict.ok and file_verdict.records == 8, file_verdict

    store.append_batch([entry("acme", n) for n in range(13, 16)])  # the chain goes on from the archived range
    store.checkpoints.add(checkpoint(store, "acme", 8, 15))
    second = archive_before(store, keyring(), "acme", T0 + timedelta(hours=1), tmp_path / "archive")
    assert second is not None and (second.from_seq, second.through_seq) == (9, 15)
    assert verify_archive(Path(second.location), keyring()).ok
    assert verify_trail(store, keyring())[0].ok and store.count(tenant="acme") == 0
    store.append_batch([entry("acme", 16)])
    assert store.records(tenant="acme")[0].seq == 16 and verify_trail(store, keyring())[0].ok


def test_nothing_is_archived_before_a_checkpoint_covers_it(store: AuditStore, tmp_path: Path) -> None:
    assert archive_before(store, keyring(), "acme", T0 + timedelta(seconds=3), tmp_path) is None
    assert store.count(tenant="acme") == 12


def test_a_range_that_does_not_verify_is_not_archived(store: AuditStore, tmp_path: Path) -> None:
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE audit_record SET body = '{}' WHERE tenant = 'acme' AND seq = 6"))
    with pytest.raises(RetentionError, match="do not verify"):
        archive_before(store, keyring(), "acme", T0 + timedelta(seconds=10), tmp_path / "archive")
    assert store.count(tenant="acme") == 12 and not (tmp_path / "archive").exists()


def test_deleting_old_records_without_archiving_them_is_missing_records(store: AuditStore) -> None:
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_record WHERE tenant = 'acme' AND seq <= 8"))
    (verdict,) = verify_trail(store, keyring())
    assert (verdict.ok, verdict.first_bad_seq, verdict.problem) == (False, 1, "missing")


def test_a_forged_archive_entry_is_not_vouched_for(store: AuditStore) -> None:
    with store.engine.begin() as conn:  # delete 1..9 and claim they were archived
        conn.execute(text("DELETE FROM audit_record WHERE tenant = 'acme' AND seq <= 9"))
        conn.execute(text("INSERT INTO audit_archive (tenant, from_seq, through_seq, through_hash, location, sha256, "
                          "archived_at) VALUES ('acme', 1, 9, :h, 'nowhere', :h, :t)"),
                     {"h": "ab" * 32, "t": T0})
    (verdict,) = verify_trail(store, keyring())
    assert (verdict.ok, verdict.problem) == (False, "missing") and "no signed checkpoint vouches" in verdict.reason


def test_an_edited_archive_file_names_the_changed_record(store: AuditStore, tmp_path: Path) -> None:
    archived = archive_before(store, keyring(), "acme", T0 + timedelta(seconds=10), tmp_path)
    assert archived is not None
    path = Path(archived.location)
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    record = json.loads(lines[3])
    record["body"] = '{"n":3,"text":"nothing happened"}'
    lines[3] = json.dumps(record)
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    verdict = verify_archive(path, keyring())
    assert (verdict.first_bad_seq, verdict.problem) == (3, "changed")


def test_a_line_of_an_archive_edited_into_junk_is_a_finding_not_a_crash(store: AuditStore, tmp_path: Path) -> None:
    archived = archive_before(store, keyring(), "acme", T0 + timedelta(seconds=10), tmp_path)
    assert archived is not None
    path = Path(archived.location)
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    lines[5] = "{not json"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    verdict = verify_archive(path, keyring())
    assert (verdict.ok, verdict.first_bad_seq, verdict.problem) == (False, 5, "changed"), verdict
    assert "{not json" in verdict.reason


def test_the_system_chain_is_archived_and_verifies_like_a_tenants(db_url: str, tmp_path: Path) -> None:
    store = AuditStore(db_url)
    store.append_batch([entry(subjects.SYSTEM_TENANT, n) for n in range(1, 5)])
    store.checkpoints.add(checkpoint(store, subjects.SYSTEM_TENANT, 0, 3))
    archived = archive_before(store, keyring(), subjects.SYSTEM_TENANT, T0 + timedelta(hours=1), tmp_path)
    assert archived is not None and (archived.from_seq, archived.through_seq) == (1, 3)
    assert verify_archive(Path(archived.location), keyring()).ok
    (verdict,) = verify_trail(store, keyring())
    assert verdict.ok and verdict.tenant == subjects.SYSTEM_TENANT and verdict.archived_through == 3
    store.close()


def test_appending_and_checkpointing_go_on_after_rows_edited_into_junk(tmp_path: Path) -> None:
    store = AuditStore(f"sqlite:///{tmp_path}/audit.db")  # SQLite keeps text in an integer column; PostgreSQL refuses
    store.append_batch([entry("acme", n) for n in range(1, 13)])
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE audit_record SET seq = 'twelve' WHERE tenant = 'acme' AND seq = 12"))
        conn.execute(text("INSERT INTO audit_checkpoint (tenant, seq, event_id, signed, issued_at, published) "
                          "VALUES ('acme', 'four', 'junk', '{not json', '2026-11-20 09:00:00', 1)"))
    assert store.heads()["acme"][0] == 11 and store.checkpoints.latest() == {"acme": 0}
    outcome = store.append_batch([entry("acme", 13)])
    assert outcome.stored == 1 and outcome.heads == {"acme": 12}
    junk_checkpoint, chain = verify_trail(store, keyring())
    assert (junk_checkpoint.problem, chain.problem) == ("malformed checkpoint", "changed")
    assert "'twelve' in its seq column" in chain.reason
    store.close()
