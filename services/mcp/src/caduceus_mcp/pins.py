"""Pinned tool definitions: which definition of which tool a person approved, per tenant (or workspace).

SQLite in the embedded stack, PostgreSQL in production (`CADUCEUS_PINS_DB_URL`); one table, its own metadata so
nothing else's tables are created beside it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, create_engine, delete, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

METADATA = MetaData()
PINS = Table(
    "mcp_pins", METADATA,
    Column("tenant", String(63), primary_key=True),
    Column("workspace", String(63), primary_key=True),  # "" for a tenant-wide pin
    Column("server", String(64), primary_key=True),
    Column("tool", String(256), primary_key=True),
    Column("digest", String(64), nullable=False),
    Column("definition", Text, nullable=False),
    Column("approved_by", String(256), nullable=False),
    Column("pinned_at", DateTime(timezone=True), nullable=False),
)

# Revocations made outside the gateway (the CLI), waiting for the gateway to publish them as audited events.
REVOCATIONS = Table(
    "mcp_pin_revocations", METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant", String(63), nullable=False),
    Column("workspace", String(63), nullable=False),
    Column("server", String(64), nullable=False),
    Column("tool", String(256), nullable=False),
    Column("digest", String(64), nullable=False),
    Column("actor", String(256), nullable=False),
)


def create_tables(engine: Engine) -> None:
    """Create the tables that are missing. Replicas starting together on a new database race to create them: the
    loser's CREATE fails with "already exists", and another look finds it there. Each table can be lost once, so
    a look per table (and one more) ends the race."""
    for attempt in range(len(METADATA.tables) + 1):
        try:
            METADATA.create_all(engine)
            return
        except DBAPIError:
            if attempt == len(METADATA.tables):
                raise


@dataclass(frozen=True)
class Revocation:
    id: int
    pin: Pin
    actor: str


@dataclass(frozen=True)
class Pin:
    tenant: str
    workspace: str
    server: str
    tool: str
    digest: str
    definition: dict[str, Any]
    approved_by: str
    pinned_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "workspace": self.workspace, "server": self.server, "tool": self.tool,
                "digest": self.digest, "approved_by": self.approved_by, "pinned_at": self.pinned_at.isoformat(),
                "definition": self.definition}


class PinStore:
    """Pins in one database; every method is a short transaction (safe for several gateway replicas)."""

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        else:
            self.engine = create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2)
        create_tables(self.engine)

    def get(self, tenant: str, workspace: str, server: str, tool: str) -> Pin | None:
        with self.engine.connect() as db:
            row = db.execute(select(PINS).where(PINS.c.tenant == tenant, PINS.c.workspace == workspace,
                                                PINS.c.server == server, PINS.c.tool == tool)).first()
        return _pin(row) if row is not None else None

    def pin(self, tenant: str, workspace: str, server: str, tool: str, digest: str, definition: dict[str, Any],
            approved_by: str) -> Pin:
        """Pin (or re-pin) a definition."""
        pinned = Pin(tenant, workspace, server, tool, digest, definition, approved_by, datetime.now(UTC))
        with self.engine.begin() as db:
            db.execute(delete(PINS).where(PINS.c.tenant == tenant, PINS.c.workspace == workspace,
                                          PINS.c.server == server, PINS.c.tool == tool))
            db.execute(PINS.insert().values(tenant=tenant, workspace=workspace, server=server, tool=tool,
                                            digest=digest, definition=json.dumps(definition, sort_keys=True),
                                            approved_by=approved_by, pinned_at=pinned.pinned_at))
        return pinned

    def revoke(self, tenant: str, server: str, tool: str | None = None, workspace: str | None = None, *,
               actor: str = "operator") -> list[Pin]:
        """Remove the matching pins (every tool of the server when `tool` is None); returns what was removed.
        Each removal is queued, in the same transaction, for the gateway to publish as an audited event."""
        removed = [p for p in self.list(tenant, server=server, workspace=workspace) if tool is None or p.tool == tool]
        with self.engine.begin() as db:
            for p in removed:
                db.execute(delete(PINS).where(PINS.c.tenant == p.tenant, PINS.c.workspace == p.workspace,
                                              PINS.c.server == p.server, PINS.c.tool == p.tool))
                db.execute(REVOCATIONS.insert().values(tenant=p.tenant, workspace=p.workspace, server=p.server,
                                                       tool=p.tool, digest=p.digest, actor=actor[:256]))
        return removed

    def pending_revocations(self) -> list[Revocation]:
        with self.engine.connect() as db:
            rows = db.execute(select(REVOCATIONS).order_by(REVOCATIONS.c.id)).all()
        now = datetime.now(UTC)
        return [Revocation(r.id, Pin(r.tenant, r.workspace, r.server, r.tool, r.digest, {}, "", now), r.actor)
                for r in rows]

    def published(self, revocation_id: int) -> None:
        with self.engine.begin() as db:
            db.execute(delete(REVOCATIONS).where(REVOCATIONS.c.id == revocation_id))

    def list(self, tenant: str | None = None, *, server: str | None = None, workspace: str | None = None) -> list[Pin]:
        query = select(PINS)
        if tenant is not None:
            query = query.where(PINS.c.tenant == tenant)
        if server is not None:
            query = query.where(PINS.c.server == server)
        if workspace is not None:
            query = query.where(PINS.c.workspace == workspace)
        with self.engine.connect() as db:
            rows = db.execute(query.order_by(PINS.c.tenant, PINS.c.server, PINS.c.tool, PINS.c.workspace)).all()
        return [_pin(row) for row in rows]

    def close(self) -> None:
        self.engine.dispose()


def _pin(row: Any) -> Pin:
    pinned_at = row.pinned_at if row.pinned_at.tzinfo else row.pinned_at.replace(tzinfo=UTC)
    return Pin(row.tenant, row.workspace, row.server, row.tool, row.digest, json.loads(row.definition),
               row.approved_by, pinned_at)
