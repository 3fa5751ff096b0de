"""The audit store: per-tenant hash chains in SQL (SQLite by default, PostgreSQL by URL).

Appends are batched, one transaction per batch. Appends to one tenant's chain
are serialized in the database, so replicas of the audit service sharing it
take turns: on SQLite the transaction holds the write lock from its start
(BEGIN IMMEDIATE), on PostgreSQL it takes a transaction-scoped advisory lock
per chain (`pg_advisory_xact_lock`, in tenant order so two batches never wait
on each other) before it reads the chain's head. The unique (tenant, seq) and
event_id constraints stay as the last guard: a concurrent append that got past
them anyway fails instead of forking a chain, and the batch is retried.

`AuditStore(url)` is the one entry point: records here, signed checkpoints in
`store.checkpoints`, archived ranges in `store.archives`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, func, insert, select, text, type_coerce
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from caduceus_audit.adapters.archive_ledger import ArchiveLedger
from caduceus_audit.adapters.checkpoint_ledger import CheckpointLedger
from caduceus_audit.adapters.database import (
    Database,
    StoreRefused,
    StoreUnavailable,
    translated_errors,
)
from caduceus_audit.adapters.tables import RECORDS, AuditRecord, StoredDateTime
from caduceus_audit.domain.chain import as_utc, record_hash
from caduceus_audit.domain.entries import AuditEntry
from caduceus_audit.domain.verification import ChainVerdict, verify_links

__all__ = ["AppendOutcome", "AuditRecord", "AuditStore", "RecordFilter", "StoreRefused", "StoreUnavailable"]

# How often a batch is retried when another writer appended to the same chain first.
CONFLICT_RETRIES = 8
# Rows fetched per round trip when streaming a chain or an export.
STREAM_BATCH = 5000
CHAINED_COLUMNS = ("tenant", "seq", "event_id", "kind", "subject", "session_id", "call_id", "trace_id", "occurred_at",
                   "recorded_at", "body", "rejected", "reject_reason", "prev_hash", "hash")


@dataclass(frozen=True)
class AppendOutcome:
    stored: int
    duplicates: int
    # Each tenant appended to, with the seq of its chain's head afterwards.
    heads: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordFilter:
    """Which records to read: all by default; each field set narrows it (times are occurred_at, `until` exclusive)."""

    tenant: str | None = None
    session_id: str | None = None
    trace_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    kinds: tuple[str, ...] | None = None

    def apply(self, query: Any) -> Any:
        for column, value in (("tenant", self.tenant), ("session_id", self.session_id), ("trace_id", self.trace_id)):
            if value is not None:
                query = query.where(RECORDS.c[column] == value)
        if self.kinds is not None:
            query = query.where(RECORDS.c.kind.in_(self.kinds))
        if self.since is not None:
            query = query.where(RECORDS.c.occurred_at >= as_utc(self.since))
        if self.until is not None:
            query = query.where(RECORDS.c.occurred_at < as_utc(self.until))
        return query


class AuditStore:
    """The audit trail in SQL. Thread-safe; the service appends from one writer at a time."""

    def __init__(self, url: str | URL) -> None:
        self.database = Database(url)
        self.url = self.database.url
        self.engine = self.database.engine
        self.checkpoints = CheckpointLedger(self.database)
        self.archives = ArchiveLedger(self.database)
        self._lock = threading.Lock()

    def ensure_schema(self) -> None:
        """Create the tables if they do not exist. Raises StoreUnavailable when the database cannot be reached."""
        self.database.ensure_schema()

    def append_batch(self, entries: Sequence[AuditEntry], *, recorded_at: datetime | None = None) -> AppendOutcome:
        """Append entries in order to their tenants' chains, in one transaction.

        An entry whose event_id is already stored (a redelivery, a re-publish) is skipped, so
        appending the same batch twice stores it once. Raises StoreUnavailable or StoreRefused;
        nothing is stored then.
        """
        with self._lock:
            self.ensure_schema()
            for _ in range(CONFLICT_RETRIES):
                try:
                    with translated_errors():
                        return self._append_once(entries, recorded_at or datetime.now(UTC))
                except _ChainMoved:
                    continue
            raise StoreUnavailable(f"the chain kept moving under {CONFLICT_RETRIES} attempts: another writer is busy")

    def _append_once(self, entries: Sequence[AuditEntry], recorded_at: datetime) -> AppendOutcome:
        unique = _first_of_each_event(entries)
        with self.database.writing() as conn:
            _lock_chains(conn, {entry.tenant for entry in unique})
            ids = [entry.event_id for entry in unique]
            stored = set(conn.execute(select(RECORDS.c.event_id).where(RECORDS.c.event_id.in_(ids))).scalars())
            fresh = [entry for entry in unique if entry.event_id not in stored]
            heads = {tenant: _head(conn, tenant) for tenant in dict.fromkeys(e.tenant for e in fresh)}
            rows = []
            for entry in fresh:
                seq, prev_hash = heads[entry.tenant]
                row = chained_row(entry, seq + 1, prev_hash, recorded_at)
                heads[entry.tenant] = (row["seq"], row["hash"])
                rows.append(row)
            if rows:
                try:
                    conn.execute(insert(RECORDS), rows)
                except IntegrityError as exc:
                    raise _ChainMoved() from exc
        return AppendOutcome(stored=len(rows), duplicates=len(entries) - len(rows),
                             heads={tenant: seq for tenant, (seq, _hash) in heads.items()})

    def heads(self) -> dict[str, tuple[int, str]]:
        """Each tenant's chain head: (seq, hash) of its last record."""
        latest = select(RECORDS.c.tenant, func.max(RECORDS.c.seq).label("seq")).group_by(RECORDS.c.tenant).subquery()
        query = select(RECORDS.c.tenant, RECORDS.c.seq, RECORDS.c.hash).join(
            latest, (RECORDS.c.tenant == latest.c.tenant) & (RECORDS.c.seq == latest.c.seq))
        with self.database.reading() as conn:
            heads = {row.tenant: (row.seq, row.hash) for row in conn.execute(query)}
            # A head edited into junk (SQLite keeps text in an integer column) is passed over, not raised.
            return {tenant: head if _well_formed(*head) else _head(conn, tenant) for tenant, head in heads.items()}

    def hashes(self, tenant: str, after_seq: int, through_seq: int) -> list[tuple[int, str]]:
        """(seq, hash) of a tenant's records after `after_seq` up to `through_seq`, in order."""
        query = (select(RECORDS.c.seq, RECORDS.c.hash)
                 .where(RECORDS.c.tenant == tenant, RECORDS.c.seq > after_seq, RECORDS.c.seq <= through_seq)
                 .order_by(RECORDS.c.seq))
        with self.database.reading() as conn:
            return [(row.seq, row.hash) for row in conn.execute(query)]

    def count(self, tenant: str | None = None, session_id: str | None = None) -> int:
        """How many records are stored, for one tenant and/or one session if given."""
        query = RecordFilter(tenant=tenant, session_id=session_id).apply(select(func.count()).select_from(RECORDS))
        with self.database.reading() as conn:
            return int(conn.execute(query).scalar_one())

    def records(self, tenant: str | None = None, session_id: str | None = None) -> list[AuditRecord]:
        """Stored records in append order (for one tenant, that is seq order)."""
        self.ensure_schema()
        order = (AuditRecord.seq,) if tenant is not None else (AuditRecord.id,)
        query = RecordFilter(tenant=tenant, session_id=session_id).apply(select(AuditRecord)).order_by(*order)
        with translated_errors(), Session(self.engine) as session:
            return list(session.scalars(query).all())

    def stream(self, where: RecordFilter = RecordFilter(), *, after_id: int = 0,
               limit: int | None = None) -> Iterator[Row[Any]]:
        """Records matching `where` with an id above `after_id`, in append order, fetched in batches.

        Rows carry every AuditRecord column (and `id`), for exports and timelines over any number of records.
        """
        query = where.apply(select(RECORDS).where(RECORDS.c.id > after_id)).order_by(RECORDS.c.id)
        if limit is not None:
            query = query.limit(limit)
        with self.database.reading() as conn:
            yield from conn.execution_options(yield_per=STREAM_BATCH).execute(query)

    def tenants(self) -> list[str]:
        """Every tenant with a chain (or checkpoints, or an archive), sorted."""
        with self.database.reading() as conn:
            stored = set(conn.execute(select(RECORDS.c.tenant).distinct()).scalars())
        return sorted(stored | set(self.checkpoints.tenants()) | set(self.archives.tenants()))

    def chain(self, tenant: str, *, through_seq: int | None = None) -> Iterator[Row[Any]]:
        """A tenant's records in seq order (up to `through_seq`), with the chained fields only: what verification reads."""
        query = select(*(_raw_time(RECORDS.c[name]) for name in CHAINED_COLUMNS)).where(RECORDS.c.tenant == tenant)
        if through_seq is not None:
            query = query.where(RECORDS.c.seq <= through_seq)
        with self.database.reading() as conn:
            yield from conn.execution_options(yield_per=STREAM_BATCH).execute(query.order_by(RECORDS.c.seq))

    def locate(self, tenant: str, record_hash_hex: str) -> int | None:
        """The seq of the tenant's record holding this hash, if any (to explain a broken link)."""
        query = select(RECORDS.c.seq).where(RECORDS.c.tenant == tenant, RECORDS.c.hash == record_hash_hex).limit(1)
        with self.database.reading() as conn:
            return conn.execute(query).scalar()

    def verify_chain(self, tenant: str) -> ChainVerdict:
        """Recompute a tenant's chain against its own links and the checkpoints stored beside it.

        The checkpoints' signatures are not checked here (that needs the audit key: see
        `caduceus_audit.verify`); this is the database's own view of its integrity.
        """
        checkpoints = [signed.checkpoint for signed in self.checkpoints.signed(tenant)]
        return verify_links(tenant, self.chain(tenant), checkpoints=checkpoints, anchor=self.archives.anchor(tenant),
                            locate=lambda wanted: self.locate(tenant, wanted))

    def close(self) -> None:
        self.database.close()


def _raw_time(column: Any) -> Any:
    # Timestamps as the driver reads them (naive on SQLite, meaning UTC): the hash reads them so, and skipping the
    # conversion to aware datetimes matters over millions of rows.
    if column.name in ("occurred_at", "recorded_at"):
        return type_coerce(column, StoredDateTime()).label(column.name)
    return column


# The first key of the advisory locks on audit chains (the second is the tenant's hash): "cadu".
CHAIN_LOCK_CLASS = 0x63616475


def _lock_chains(conn: Any, tenants: set[str]) -> None:
    """Hold each tenant's chain until the transaction ends (PostgreSQL; SQLite's write lock is already held).

    Taken before the event ids and heads are read, so a replica reads a head no other writer can move, and
    sees the events another replica committed just before."""
    if conn.dialect.name != "postgresql":
        return
    for tenant in sorted(tenants):
        conn.execute(text("SELECT pg_advisory_xact_lock(:cls, hashtext(:tenant))"),
                     {"cls": CHAIN_LOCK_CLASS, "tenant": tenant})


class _ChainMoved(Exception):
    """Another writer appended to a chain (or stored an event) between our read and our insert."""


def _head(conn: Any, tenant: str) -> tuple[int, str]:
    """The tenant's last well-formed record: appending goes on after it, and verify reports any junk past it."""
    newest_first = select(RECORDS.c.seq, RECORDS.c.hash).where(RECORDS.c.tenant == tenant).order_by(
        RECORDS.c.seq.desc())
    row = conn.execute(newest_first.limit(1)).first()
    if row is None:
        return ArchiveLedger.anchor_in(conn, tenant)
    if _well_formed(row.seq, row.hash):
        return row.seq, row.hash
    # Only after an edit: look past the junk (SQLite sorts text above every number).
    return next(((row.seq, row.hash) for row in conn.execute(newest_first) if _well_formed(row.seq, row.hash)),
                ArchiveLedger.anchor_in(conn, tenant))


def _well_formed(seq: Any, hash_hex: Any) -> bool:
    return isinstance(seq, int) and not isinstance(seq, bool) and isinstance(hash_hex, str)


def _first_of_each_event(entries: Sequence[AuditEntry]) -> list[AuditEntry]:
    seen: set[str] = set()
    unique = []
    for entry in entries:
        if entry.event_id not in seen:
            seen.add(entry.event_id)
            unique.append(entry)
    return unique


def chained_row(entry: AuditEntry, seq: int, prev_hash: str, recorded_at: datetime) -> dict[str, Any]:
    """The stored row of an entry appended at `seq` after `prev_hash`, its hash computed."""
    row = {
        "tenant": entry.tenant, "seq": seq, "event_id": entry.event_id, "kind": entry.kind,
        "subject": entry.subject, "session_id": entry.session_id, "call_id": entry.call_id,
        "trace_id": entry.trace_id, "occurred_at": as_utc(entry.occurred_at), "recorded_at": as_utc(recorded_at),
        "body": entry.body, "rejected": entry.rejected, "reject_reason": entry.reject_reason, "prev_hash": prev_hash,
    }
    row["hash"] = record_hash(**row)
    return row

