"""Signed checkpoints kept beside the chains: stored once per (tenant, seq), published on the bus after."""

from __future__ import annotations

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError

from caduceus_audit.adapters.database import Database, translated_errors
from caduceus_audit.adapters.tables import CHECKPOINTS
from caduceus_contracts import AuditCheckpointed, SignedCheckpoint


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
        """Stored checkpoints (of one tenant), in seq order, signatures not yet checked."""
        return [SignedCheckpoint.model_validate_json(text) for _tenant, text in self._rows(tenant)]

    def events(self, tenant: str | None = None) -> list[AuditCheckpointed]:
        """Stored checkpoints as the events published for them, for export."""
        return [AuditCheckpointed.of(signed) for signed in self.signed(tenant)]

    def _rows(self, tenant: str | None) -> list[tuple[str, str]]:
        query = select(CHECKPOINTS.c.tenant, CHECKPOINTS.c.signed).order_by(CHECKPOINTS.c.tenant, CHECKPOINTS.c.seq)
        if tenant is not None:
            query = query.where(CHECKPOINTS.c.tenant == tenant)
        with self.database.reading() as conn:
            return [(row.tenant, row.signed) for row in conn.execute(query)]

    def latest(self) -> dict[str, int]:
        """Each tenant's last checkpointed seq."""
        query = select(CHECKPOINTS.c.tenant, func.max(CHECKPOINTS.c.seq)).group_by(CHECKPOINTS.c.tenant)
        with self.database.reading() as conn:
            return {tenant: seq for tenant, seq in conn.execute(query)}

    def unpublished(self) -> list[AuditCheckpointed]:
        """Checkpoints stored but not yet confirmed on the bus (the bus was down, or the service stopped)."""
        query = select(CHECKPOINTS.c.signed).where(CHECKPOINTS.c.published.is_(False)).order_by(CHECKPOINTS.c.id)
        with self.database.reading() as conn:
            texts = list(conn.execute(query).scalars())
        return [AuditCheckpointed.of(SignedCheckpoint.model_validate_json(text)) for text in texts]

    def mark_published(self, event_id: str) -> None:
        with translated_errors(), self.database.writing() as conn:
            conn.execute(update(CHECKPOINTS).where(CHECKPOINTS.c.event_id == event_id).values(published=True))

    def tenants(self) -> list[str]:
        with self.database.reading() as conn:
            return list(conn.execute(select(CHECKPOINTS.c.tenant).distinct()).scalars())
