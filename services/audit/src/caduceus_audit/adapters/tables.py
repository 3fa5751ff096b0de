"""The audit database's tables: the chained records, the signed checkpoints, the archived ranges."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Text, UniqueConstraint
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from caduceus_audit.domain.chain import as_utc

# What a stored timestamp that is no timestamp at all reads as (SQLite stores any text): the record's hash no
# longer matches, so verification names it as changed instead of failing to read the chain.
UNREADABLE = datetime(1, 1, 1, tzinfo=UTC)


class _TolerantDateTime(TypeDecorator[datetime]):
    impl = DateTime(timezone=True)
    cache_ok = True

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        process = super().result_processor(dialect, coltype)
        if process is None:
            return None

        def tolerant(value: Any) -> datetime | None:
            try:
                return process(value)
            except (ValueError, TypeError):
                return UNREADABLE
        return tolerant


class UtcDateTime(_TolerantDateTime):
    """A timestamp stored in UTC and read back timezone-aware, on SQLite as on PostgreSQL."""

    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else as_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else as_utc(value)


class StoredDateTime(_TolerantDateTime):
    """A stored timestamp as the driver reads it (naive on SQLite, meaning UTC), for reading millions quickly."""

    cache_ok = True


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
    trace_id: str | None = Field(default=None, max_length=32, index=True)
    occurred_at: datetime = Field(sa_type=UtcDateTime)
    recorded_at: datetime = Field(sa_type=UtcDateTime)
    body: str = Field(sa_type=Text)
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)
    rejected: bool = False
    reject_reason: str | None = Field(default=None, sa_type=Text)


class CheckpointRow(SQLModel, table=True):
    """A signed checkpoint of a tenant's chain, as the audit service made it (and published it, once done)."""

    __tablename__ = "audit_checkpoint"
    __table_args__ = (UniqueConstraint("tenant", "seq", name="uq_audit_checkpoint_tenant_seq"),)

    id: int | None = Field(default=None, primary_key=True)
    tenant: str = Field(max_length=64)
    seq: int
    event_id: str = Field(max_length=160, unique=True)
    signed: str = Field(sa_type=Text)  # the SignedCheckpoint as JSON
    issued_at: datetime = Field(sa_type=UtcDateTime)
    published: bool = False


class ArchiveRow(SQLModel, table=True):
    """Records 1..through_seq of a tenant moved out of the database into an archive file."""

    __tablename__ = "audit_archive"
    __table_args__ = (UniqueConstraint("tenant", "through_seq", name="uq_audit_archive_tenant_seq"),)

    id: int | None = Field(default=None, primary_key=True)
    tenant: str = Field(max_length=64)
    from_seq: int
    through_seq: int
    through_hash: str = Field(max_length=64)
    location: str = Field(sa_type=Text)
    sha256: str = Field(max_length=64)
    archived_at: datetime = Field(sa_type=UtcDateTime)


RECORDS = AuditRecord.__table__  # type: ignore[attr-defined]
CHECKPOINTS = CheckpointRow.__table__  # type: ignore[attr-defined]
ARCHIVES = ArchiveRow.__table__  # type: ignore[attr-defined]
TABLES = [RECORDS, CHECKPOINTS, ARCHIVES]
