"""Retention: moving a tenant's old records out of the database into an archive file, without ever breaking
verification.

A range is archived only up to a signed checkpoint, and only after the range verifies
against it. The file holds the records exactly as stored (so it can be verified on its
own, `verify_archive`) between the checkpoint it starts after and the one it ends at.
The database keeps a row saying what went where; its chain then starts right after the
checkpoint, which vouches for the hash the remaining records link to.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import func, select

from caduceus_audit.adapters.archive_ledger import ArchivedRange
from caduceus_audit.adapters.store import CHAINED_COLUMNS, AuditStore
from caduceus_audit.adapters.tables import RECORDS
from caduceus_audit.domain.chain import as_utc
from caduceus_audit.domain.verification import GENESIS, Anchor, ChainVerdict, verify_links
from caduceus_contracts import Keyring, SignatureError, SignedCheckpoint

ARCHIVE_FORMAT = "caduceus-audit-archive/1"


class RetentionError(Exception):
    """Archiving cannot go ahead; the message says why and what to do."""


@dataclass(frozen=True)
class ArchiveHeader:
    tenant: str
    from_seq: int
    through_seq: int
    start: SignedCheckpoint | None  # the checkpoint the file continues from (None: from genesis)
    end: SignedCheckpoint


def archive_before(store: AuditStore, keyring: Keyring, tenant: str, before: datetime,
                   directory: Path) -> ArchivedRange | None:
    """Archive the tenant's records that occurred before `before`, up to the last checkpoint among them.

    Returns what was archived, or None when no signed checkpoint falls in that range yet.
    Raises RetentionError when the range does not verify against its checkpoint.
    """
    anchor = store.archives.anchor(tenant)
    end = _last_checkpoint_before(store, keyring, tenant, anchor, before)
    if end is None:
        return None
    start = _checkpoint_at(store, keyring, tenant, anchor.seq) if anchor.seq else None
    checkpoint = end.checkpoint
    vouching = [signed.checkpoint for signed in (start, end) if signed is not None]
    verdict = verify_links(tenant, store.chain(tenant, through_seq=checkpoint.seq), checkpoints=vouching,
                           anchor=anchor, locate=lambda wanted: store.locate(tenant, wanted))
    if not verdict.ok or verdict.records != checkpoint.seq - anchor.seq:
        raise RetentionError(f"records of {tenant} up to {checkpoint.seq} do not verify ({verdict.reason}): nothing "
                             "archived; investigate with `caduceus audit verify` first")
    header = ArchiveHeader(tenant, anchor.seq + 1, checkpoint.seq, start, end)
    path = directory / f"{tenant}-{header.from_seq:012d}-{header.through_seq:012d}.jsonl.gz"
    digest = _write(path, header, store.chain(tenant, through_seq=checkpoint.seq))
    archived = ArchivedRange(tenant, header.from_seq, header.through_seq, checkpoint.hash, str(path.resolve()), digest,
                             datetime.now(UTC))
    store.archives.move_out(archived)
    return archived


def _trusted(signed: SignedCheckpoint, keyring: Keyring) -> bool:
    try:
        signed.verify(keyring)
    except SignatureError:
        return False
    return True


def _checkpoint_at(store: AuditStore, keyring: Keyring, tenant: str, seq: int) -> SignedCheckpoint:
    for signed in store.checkpoints.signed(tenant):
        if signed.checkpoint.seq == seq and _trusted(signed, keyring):
            return signed
    raise RetentionError(f"no signed checkpoint of {tenant} at record {seq}, where the last archive ended: run "
                         "`caduceus audit verify`")


def _last_checkpoint_before(store: AuditStore, keyring: Keyring, tenant: str, anchor: Anchor,
                            before: datetime) -> SignedCheckpoint | None:
    query = select(func.max(RECORDS.c.seq)).where(RECORDS.c.tenant == tenant, RECORDS.c.occurred_at < as_utc(before))
    with store.database.reading() as conn:
        last_old = conn.execute(query).scalar()
    if last_old is None:
        return None
    candidates = [signed for signed in store.checkpoints.signed(tenant)
                  if anchor.seq < signed.checkpoint.seq <= last_old and _trusted(signed, keyring)]
    return max(candidates, key=lambda signed: signed.checkpoint.seq, default=None)


def _record_line(row: Any) -> str:
    fields = {name: getattr(row, name) for name in CHAINED_COLUMNS}
    fields["occurred_at"] = fields["occurred_at"].isoformat()
    fields["recorded_at"] = fields["recorded_at"].isoformat()
    fields["rejected"] = bool(fields["rejected"])
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))


def _write(path: Path, header: ArchiveHeader, rows: Iterator[Any]) -> str:
    """Write the archive (header line, then one record per line), flushed to disk; returns its SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    head = {"format": ARCHIVE_FORMAT, "tenant": header.tenant, "from_seq": header.from_seq,
            "through_seq": header.through_seq,
            "start": header.start.model_dump(mode="json") if header.start else None,
            "end": header.end.model_dump(mode="json")}
    with open(partial, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as packed:
            packed.write((json.dumps(head) + "\n").encode())
            for row in rows:
                packed.write((_record_line(row) + "\n").encode("utf-8"))
        raw.flush()
        os.fsync(raw.fileno())
    partial.replace(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_archive(path: Path) -> tuple[ArchiveHeader, Iterator[Any]]:
    """An archive's header and its records (as objects with the chained fields). Raises RetentionError."""
    try:
        stream = gzip.open(path, "rt", encoding="utf-8")
        head = json.loads(stream.readline())
        if head.get("format") != ARCHIVE_FORMAT:
            raise ValueError(f"not a {ARCHIVE_FORMAT} file")
        header = ArchiveHeader(head["tenant"], head["from_seq"], head["through_seq"],
                               SignedCheckpoint.model_validate(head["start"]) if head["start"] else None,
                               SignedCheckpoint.model_validate(head["end"]))
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise RetentionError(f"{path} is not a readable audit archive ({exc})") from None

    def records() -> Iterator[Any]:
        with stream:
            for line in stream:
                yield _archived_record(line, header.tenant)

    return header, records()


def _archived_record(line: str, tenant: str) -> Any:
    """One archived record; a line that is none (edited) reads as a record verification reports as changed."""
    try:
        fields = json.loads(line)
        fields["occurred_at"] = datetime.fromisoformat(fields["occurred_at"])
        fields["recorded_at"] = datetime.fromisoformat(fields["recorded_at"])
        if set(fields) != set(CHAINED_COLUMNS):
            raise ValueError("not the chained fields")
    except (ValueError, TypeError, KeyError, RecursionError):
        return SimpleNamespace(**{**dict.fromkeys(CHAINED_COLUMNS), "tenant": tenant, "seq": line.strip()[:40]})
    return SimpleNamespace(**fields)


def verify_archive(path: Path, keyring: Keyring) -> ChainVerdict:
    """Check an archive file on its own: both checkpoints signed by audit, and the records between them intact."""
    header, records = read_archive(path)
    try:
        end = header.end.verify(keyring)
        start = header.start.verify(keyring) if header.start else None
    except SignatureError as exc:
        return ChainVerdict(header.tenant, False, f"the archive's checkpoints are not signed by the audit service ({exc})",
                            first_bad_seq=header.through_seq, problem="forged checkpoint")
    anchor = Anchor(start.seq, start.hash) if start else GENESIS
    if anchor.seq != header.from_seq - 1:
        return ChainVerdict(header.tenant, False, f"the archive says it starts at {header.from_seq} but its starting "
                            f"checkpoint is at {anchor.seq}", first_bad_seq=header.from_seq, problem="changed")
    return verify_links(header.tenant, records, checkpoints=[c for c in (start, end) if c is not None], anchor=anchor)
