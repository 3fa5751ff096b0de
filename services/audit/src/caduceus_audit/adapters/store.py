"""The audit store: per-tenant hash chains in SQL (SQLite by default, PostgreSQL by URL).

Appends are batched, one transaction per batch. Each tenant's next seq and
previous hash are read inside the transaction; the unique (tenant, seq) and
event_id constraints make a concurrent writer's append fail instead of forking
a chain, and the batch is then retried on the new head.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    DateTime,
    Engine,
    Text,
    UniqueConstraint,
    event,
    func,
    insert,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, Session, SQLModel, create_engine

from caduceus_audit.domain.chain import GENESIS_HASH, record_hash, verify_links
from caduceus_audit.domain.entries import AuditEntry

# How often a batch is retried when another writer appended to the same chain first.
CONFLICT_RETRIES = 8
SQLITE_BUSY_TIMEOUT_S = 10.0


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and read back timezone-aware, on SQLite as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class AuditRecord(SQLModel, table=True):
    """One stored bus message: a link in its tenant's hash chain."""

    __tablename__ = "audit_record"
    __table_args__ = (UniqueConstraint("tenant", "seq", name="uq_audit_record_tenant_seq"),)

    id: int | None = Field(default=None, primary_key=True)
    tenant: str = Field(max_length=64)
    seq: int
    event_id: str = Field(max_length=160, unique=True)
    kind: str = Field(max_length=64, index=True)
    subject: str = Field(max_length=512)
    session_id: str | None = Field(default=None, max_length=128, index=True)
    call_id: str | None = Field(default=None, max_length=160, index=True)
    occurred_at: datetime = Field(sa_type=UtcDateTime)
    recorded_at: datetime = Field(sa_type=UtcDateTime)
    body: str = Field(sa_type=Text)
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)
    rejected: bool = False
    reject_reason: str | None = Field(default=None, sa_type=Text)


_table = AuditRecord.__table__  # type: ignore[attr-defined]


class StoreUnavailable(Exception):
    """The database cannot be reached or is busy; the same append may succeed later."""


class StoreRefused(Exception):
    """The database refused the data itself; retrying the same append will not help."""


@dataclass(frozen=True)
class AppendOutcome:
    stored: int
    duplicates: int


class AuditStore:
    """The audit trail in SQL. Thread-safe; the service appends from one writer at a time."""

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self.engine = _make_engine(url)
        self._lock = threading.Lock()
        self._schema_ready = False

    def ensure_schema(self) -> None:
        """Create the table if it does not exist. Raises StoreUnavailable when the database cannot be reached."""
        if self._schema_ready:
            return
        with _translated_errors(), self._writing() as conn:
            SQLModel.metadata.create_all(conn, tables=[_table])
        self._schema_ready = True

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A connection in a write transaction (on SQLite it holds the write lock from the start)."""
        with self.engine.connect() as conn:
            conn.execution_options(audit_write=True)
            with conn.begin():
                yield conn

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
                    with _translated_errors():
                        return self._append_once(entries, recorded_at or datetime.now(UTC))
                except _ChainMoved:
                    continue
            raise StoreUnavailable(f"the chain kept moving under {CONFLICT_RETRIES} attempts: another writer is busy")

    def _append_once(self, entries: Sequence[AuditEntry], recorded_at: datetime) -> AppendOutcome:
        unique = _first_of_each_event(entries)
        with self._writing() as conn:
            ids = [entry.event_id for entry in unique]
            stored = set(conn.execute(select(_table.c.event_id).where(_table.c.event_id.in_(ids))).scalars())
            fresh = [entry for entry in unique if entry.event_id not in stored]
            heads = {tenant: self._head(conn, tenant) for tenant in dict.fromkeys(e.tenant for e in fresh)}
            rows = []
            for entry in fresh:
                seq, prev_hash = heads[entry.tenant]
                row = _row(entry, seq + 1, prev_hash, recorded_at)
                heads[entry.tenant] = (row["seq"], row["hash"])
                rows.append(row)
            if rows:
                try:
                    conn.execute(insert(_table), rows)
                except IntegrityError as exc:
                    raise _ChainMoved() from exc
        return AppendOutcome(stored=len(rows), duplicates=len(entries) - len(rows))

    @staticmethod
    def _head(conn: Any, tenant: str) -> tuple[int, str]:
        row = conn.execute(
            select(_table.c.seq, _table.c.hash).where(_table.c.tenant == tenant).order_by(_table.c.seq.desc()).limit(1)
        ).first()
        return (row.seq, row.hash) if row else (0, GENESIS_HASH)

    def count(self, tenant: str | None = None, session_id: str | None = None) -> int:
        """How many records are stored, for one tenant and/or one session if given."""
        self.ensure_schema()
        query = _filtered(select(func.count()).select_from(_table), tenant, session_id)
        with _translated_errors(), self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def records(self, tenant: str | None = None, session_id: str | None = None) -> list[AuditRecord]:
        """Stored records in append order (for one tenant, that is seq order)."""
        self.ensure_schema()
        order = (AuditRecord.seq,) if tenant is not None else (AuditRecord.id,)
        query = _filtered(select(AuditRecord), tenant, session_id).order_by(*order)
        with _translated_errors(), Session(self.engine) as session:
            return list(session.scalars(query).all())

    def tenants(self) -> list[str]:
        """Every tenant with a chain, sorted."""
        self.ensure_schema()
        with _translated_errors(), self.engine.connect() as conn:
            return list(conn.execute(select(_table.c.tenant).distinct().order_by(_table.c.tenant)).scalars())

    def verify_chain(self, tenant: str) -> tuple[bool, int | None, str]:
        """Recompute a tenant's chain: (ok, the first seq that breaks it or None, why)."""
        self.ensure_schema()
        columns = [_table.c[name] for name in
                   ("tenant", "seq", "event_id", "kind", "subject", "body", "prev_hash", "hash")]
        query = select(*columns).where(_table.c.tenant == tenant).order_by(_table.c.seq)
        with _translated_errors(), self.engine.connect() as conn:
            rows = conn.execution_options(yield_per=1000).execute(query)
            return verify_links(tenant, rows).as_tuple()

    def close(self) -> None:
        self.engine.dispose()


class _ChainMoved(Exception):
    """Another writer appended to a chain (or stored an event) between our read and our insert."""


def _first_of_each_event(entries: Sequence[AuditEntry]) -> list[AuditEntry]:
    seen: set[str] = set()
    unique = []
    for entry in entries:
        if entry.event_id not in seen:
            seen.add(entry.event_id)
            unique.append(entry)
    return unique


def _row(entry: AuditEntry, seq: int, prev_hash: str, recorded_at: datetime) -> dict[str, Any]:
    digest = record_hash(tenant=entry.tenant, seq=seq, event_id=entry.event_id, kind=entry.kind,
                         subject=entry.subject, body=entry.body, prev_hash=prev_hash)
    return {
        "tenant": entry.tenant, "seq": seq, "event_id": entry.event_id, "kind": entry.kind,
        "subject": entry.subject, "session_id": entry.session_id, "call_id": entry.call_id,
        "occurred_at": entry.occurred_at, "recorded_at": recorded_at, "body": entry.body,
        "prev_hash": prev_hash, "hash": digest, "rejected": entry.rejected, "reject_reason": entry.reject_reason,
    }


def _filtered(query: Any, tenant: str | None, session_id: str | None) -> Any:
    if tenant is not None:
        query = query.where(_table.c.tenant == tenant)
    if session_id is not None:
        query = query.where(_table.c.session_id == session_id)
    return query


@contextmanager
def _translated_errors() -> Iterator[None]:
    """Turn driver errors into StoreUnavailable (try again later) or StoreRefused (this data will not go in)."""
    try:
        yield
    except (OperationalError, PoolTimeout) as exc:
        raise StoreUnavailable(_describe(exc)) from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise StoreUnavailable(_describe(exc)) from exc
        raise StoreRefused(_describe(exc)) from exc
    except SQLAlchemyError as exc:
        raise StoreRefused(_describe(exc)) from exc


def _describe(exc: BaseException) -> str:
    # The driver's own message, without SQLAlchemy's rendering of the statement and its (secret-bearing) parameters.
    original = getattr(exc, "orig", None) or exc
    first_line = str(original).strip().splitlines()[0] if str(original).strip() else ""
    return f"{type(original).__name__}: {first_line}"[:300]


def _make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transactions in hand (pysqlite would otherwise begin them lazily) and let readers run beside the writer.
        dbapi_conn.isolation_level = None
        dbapi_conn.execute("PRAGMA journal_mode=WAL")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A writer takes the write lock up front, so two appends never both read the same head.
        immediate = conn.get_execution_options().get("audit_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
