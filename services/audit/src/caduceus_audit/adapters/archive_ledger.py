"""Archived ranges: which records of a tenant left the database, where they went, and where the chain resumes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select

from caduceus_audit.adapters.database import Database, translated_errors
from caduceus_audit.adapters.tables import ARCHIVES, RECORDS
from caduceus_audit.domain.chain import GENESIS_HASH
from caduceus_audit.domain.verification import GENESIS, Anchor


@dataclass(frozen=True)
class ArchivedRange:
    tenant: str
    from_seq: int
    through_seq: int
    through_hash: str
    location: str
    sha256: str
    archived_at: datetime


class ArchiveLedger:
    """The audit_archive table, and moving a range of records out in the same transaction that records it."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def anchor(self, tenant: str) -> Anchor:
        """Where the tenant's stored chain starts: after its last archived range, or at genesis."""
        with self.database.reading() as conn:
            seq, hash_hex = self.anchor_in(conn, tenant)
        return Anchor(seq, hash_hex) if seq else GENESIS

    @staticmethod
    def anchor_in(conn: Connection, tenant: str) -> tuple[int, str]:
        row = conn.execute(select(ARCHIVES.c.through_seq, ARCHIVES.c.through_hash).where(ARCHIVES.c.tenant == tenant)
                           .order_by(ARCHIVES.c.through_seq.desc()).limit(1)).first()
        return (row.through_seq, row.through_hash) if row else (0, GENESIS_HASH)

    def ranges(self, tenant: str | None = None) -> list[ArchivedRange]:
        query = select(ARCHIVES).order_by(ARCHIVES.c.tenant, ARCHIVES.c.through_seq)
        if tenant is not None:
            query = query.where(ARCHIVES.c.tenant == tenant)
        with self.database.reading() as conn:
            return [ArchivedRange(r.tenant, r.from_seq, r.through_seq, r.through_hash, r.location, r.sha256,
                                  r.archived_at) for r in conn.execute(query)]

    def tenants(self) -> list[str]:
        with self.database.reading() as conn:
            return list(conn.execute(select(ARCHIVES.c.tenant).distinct()).scalars())

    def move_out(self, archived: ArchivedRange) -> int:
        """Record the range as archived and delete its records, in one transaction; returns how many went."""
        row: dict[str, Any] = {name: getattr(archived, name) for name in
                               ("tenant", "from_seq", "through_seq", "through_hash", "location", "sha256",
                                "archived_at")}
        self.database.ensure_schema()
        with translated_errors(), self.database.writing() as conn:
            in_range = (RECORDS.c.tenant == archived.tenant) & (RECORDS.c.seq >= archived.from_seq) & (
                RECORDS.c.seq <= archived.through_seq)
            expected = archived.through_seq - archived.from_seq + 1
            present = conn.execute(select(func.count()).select_from(RECORDS).where(in_range)).scalar_one()
            if present != expected:
                raise ArchiveMismatch(f"expected {expected} records of {archived.tenant} in "
                                      f"{archived.from_seq}..{archived.through_seq}, found {present}: verify the chain")
            conn.execute(insert(ARCHIVES), [row])
            return conn.execute(delete(RECORDS).where(in_range)).rowcount


class ArchiveMismatch(Exception):
    """The records to archive are not all there (the chain changed since the archive file was written)."""
