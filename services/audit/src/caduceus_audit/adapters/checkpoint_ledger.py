"""Signed checkpoints kept beside the chains: stored once per (tenant, seq), published on the bus after.

A row that no longer reads as a signed checkpoint (edited in the database) is set aside, never
raised: readers get the ones that read, and verification reports the others where they are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError

from caduceus_audit.adapters.database import Database, translated_errors
from caduceus_audit.adapters.tables import CHECKPOINTS
from caduceus_contracts import AuditCheckpointed, SignedCheckpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnreadableCheckpoint:
    """A checkpoint row that is not a signed checkpoint any more: where it is, and what is wrong with it."""

    row_id: int
    tenant: str
    seq: Any  # as stored: a damaged row may hold anything here
    why: str


class CheckpointLedger:
    """The audit_checkpoint table. A checkpoint is only as good as its signature: readers verify it."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def add(self, event: AuditCheckpointed, *, published: bool = False) -> bool:
        """Store a checkpoint event; False when one for the same tenant and seq is already stored."""
        checkpoint = event.checkpoint.checkpoint
        row = {"tenant": checkpoint.tenant, "seq": checkpoint.seq, "event_id": event.event_id,
               "signed": event.checkpoint.model_dump_json(), "issued_at": checkpoint.issued_at, "published": published}
        self.database.ensure_schema()
        with translated_errors():
            try:
                with self.database.writing() as conn:
                    conn.execute(insert(CHECKPOINTS), [row])
            except IntegrityError:
                return False
        return True

    def signed(self, tenant: str | None = None) -> list[SignedCheckpoint]:
        """Stored checkpoints (of one tenant), in seq order, signatures not yet checked; unreadable rows left out."""
        return [signed for _row, signed in self._read(self._rows(tenant)) if isinstance(signed, SignedCheckpoint)]

    def unreadable(self, tenant: str | None = None) -> list[UnreadableCheckpoint]:
        """Rows (of one tenant) that do not read as a signed checkpoint."""
        return [UnreadableCheckpoint(row.id, row.tenant, row.seq, signed)
                for row, signed in self._read(self._rows(tenant)) if isinstance(signed, str)]

    def events(self, tenant: str | None = None) -> list[AuditCheckpointed]:
        """Stored checkpoints as the events published for them, for export."""
        return [AuditCheckpointed.of(signed) for signed in self.signed(tenant)]

    def _rows(self, tenant: str | None) -> list[Any]:
        query = select(CHECKPOINTS.c.id, CHECKPOINTS.c.tenant, CHECKPOINTS.c.seq, CHECKPOINTS.c.signed).order_by(
            CHECKPOINTS.c.tenant, CHECKPOINTS.c.seq)
        if tenant is not None:
            query = query.where(CHECKPOINTS.c.tenant == tenant)
        with self.database.reading() as conn:
            return list(conn.execute(query))

    @staticmethod
    def _read(rows: list[Any]) -> list[tuple[Any, SignedCheckpoint | str]]:
        return [(row, _parsed(row.signed)) for row in rows]

    def latest(self) -> dict[str, int]:
        """Each tenant's last checkpointed seq."""
        query = select(CHECKPOINTS.c.tenant, func.max(CHECKPOINTS.c.seq)).group_by(CHECKPOINTS.c.tenant)
        with self.database.reading() as conn:
            latest = dict(conn.execute(query).all())
            for tenant in [tenant for tenant, seq in latest.items() if not isinstance(seq, int)]:
                # A seq edited into text (SQLite sorts it above every number): the last one that is a number.
                seqs = conn.execute(select(CHECKPOINTS.c.seq).where(CHECKPOINTS.c.tenant == tenant)).scalars()
                latest[tenant] = max((seq for seq in seqs if isinstance(seq, int)), default=0)
        return latest

    def latest_of(self, tenant: str) -> int:
        """The tenant's last checkpointed seq (0 when none)."""
        query = select(CHECKPOINTS.c.seq).where(CHECKPOINTS.c.tenant == tenant)
        with self.database.reading() as conn:
            return max((seq for seq in conn.execute(query).scalars() if isinstance(seq, int)), default=0)

    def unpublished(self) -> list[AuditCheckpointed]:
        """Checkpoints stored but not yet confirmed on the bus (the bus was down, or the service stopped)."""
        query = select(CHECKPOINTS.c.id, CHECKPOINTS.c.tenant, CHECKPOINTS.c.seq, CHECKPOINTS.c.signed).where(
            CHECKPOINTS.c.published.is_(False)).order_by(CHECKPOINTS.c.id)
        with self.database.reading() as conn:
            rows = list(conn.execute(query))
        pending = []
        for row, signed in self._read(rows):
            if isinstance(signed, str):
                log.error("checkpoint row %s (%s record %s) not published: %s; run `caduceus audit verify`", row.id,
                          row.tenant, row.seq, signed)
            else:
                pending.append(AuditCheckpointed.of(signed))
        return pending

    def mark_published(self, event_id: str) -> None:
        with translated_errors(), self.database.writing() as conn:
            conn.execute(update(CHECKPOINTS).where(CHECKPOINTS.c.event_id == event_id).values(published=True))

    def tenants(self) -> list[str]:
        with self.database.reading() as conn:
            return list(conn.execute(select(CHECKPOINTS.c.tenant).distinct()).scalars())


def _parsed(text: Any) -> SignedCheckpoint | str:
    """The signed checkpoint a row holds, or why it holds none."""
    try:
        return SignedCheckpoint.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        return f"{first.get('msg')} in its signed column{f' at {where}' if where else ''}"
    except (ValueError, TypeError) as exc:  # not text at all (SQLite keeps whatever was written)
        return f"its signed column holds no text ({type(exc).__name__})"
