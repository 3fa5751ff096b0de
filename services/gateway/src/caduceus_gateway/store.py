"""Conversations people had through the gateway, in SQLite (CADUCEUS_GATEWAY_DB, default `<state_dir>/gateway.db`)
or PostgreSQL (CADUCEUS_GATEWAY_DB_URL, for replicas sharing one database: a person's conversations are there
whichever replica serves the page).

A conversation belongs to one person of one tenant, in one workspace and channel; its entries are what was
said and done in it (the person's messages, the agent's replies, tool calls with their decisions, notices), in
order, as JSON. Every read names the owner: there is no way to read a conversation without saying whose it is.
The schema is migrated to head when the store opens (caduceus_gateway/migrations).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from caduceus_schema import Migrations, open_store

MIGRATIONS = Migrations(store="gateway", script_location="caduceus_gateway:migrations",
                        version_table="gateway_schema_version", baseline="0001", baseline_table="conversations")
TITLE_CHARS = 80


@dataclass(frozen=True)
class Conversation:
    conversation_id: str
    tenant: str
    user: str
    workspace: str
    channel: str
    title: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Entry:
    """One thing in a conversation: kind is `person`, `agent`, `call`, `notice` or `error`."""

    kind: str
    body: dict[str, Any]
    at: datetime


def _now() -> datetime:
    return datetime.now(UTC)


class ConversationStore:
    """Conversations and their entries; safe to use from several threads."""

    def __init__(self, where: Path | str) -> None:
        """`where` is a SQLite file, or a PostgreSQL URL (`postgresql+psycopg2://user:pass@host/db`)."""
        self._db: Any = open_store(where, MIGRATIONS)  # SchemaTooNew when a newer release migrated it
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def start(self, conversation_id: str, tenant: str, user: str, workspace: str, channel: str,
              first_text: str) -> Conversation:
        now = _now()
        title = " ".join(first_text.split())[:TITLE_CHARS] or "(empty)"
        with self._lock:
            self._db.execute("INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (conversation_id, tenant, user, workspace, channel, title, now.isoformat(),
                              now.isoformat()))
        return Conversation(conversation_id, tenant, user, workspace, channel, title, now, now)

    def retitle(self, conversation_id: str, text: str) -> None:
        """Name the conversation after its first message."""
        title = " ".join(text.split())[:TITLE_CHARS] or "(empty)"
        with self._lock:
            self._db.execute("UPDATE conversations SET title = ? WHERE conversation_id = ?", (title, conversation_id))

    def add(self, conversation_id: str, kind: str, body: dict[str, Any]) -> None:
        now = _now().isoformat()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT INTO conversation_entries (conversation_id, kind, body, at) VALUES (?, ?, ?, ?)",
                                 (conversation_id, kind, json.dumps(body, ensure_ascii=False), now))
                self._db.execute("UPDATE conversations SET updated_at = ? WHERE conversation_id = ?",
                                 (now, conversation_id))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def of_person(self, tenant: str, user: str, channel: str | None = None, limit: int = 100) -> list[Conversation]:
        """The person's conversations, most recent first (only those of `channel` when given)."""
        query = 'SELECT * FROM conversations WHERE tenant = ? AND "user" = ?'
        params: list[Any] = [tenant, user]
        if channel is not None:
            query += " AND channel = ?"
            params.append(channel)
        with self._lock:
            rows = self._db.execute(f"{query} ORDER BY updated_at DESC LIMIT ?", (*params, limit)).fetchall()
        return [_conversation(row) for row in rows]

    def get(self, conversation_id: str, tenant: str, user: str) -> Conversation | None:
        """The conversation when it is this person's; None for anyone else's, exactly as for one that does not exist."""
        with self._lock:
            row = self._db.execute('SELECT * FROM conversations WHERE conversation_id = ? AND tenant = ? AND "user" = ?',
                                   (conversation_id, tenant, user)).fetchone()
        return _conversation(row) if row else None

    def entries(self, conversation: Conversation) -> list[Entry]:
        with self._lock:
            rows = self._db.execute("SELECT kind, body, at FROM conversation_entries WHERE conversation_id = ? "
                                    "ORDER BY entry_id", (conversation.conversation_id,)).fetchall()
        return [Entry(kind, json.loads(body), datetime.fromisoformat(at)) for kind, body, at in rows]


def _conversation(row: tuple) -> Conversation:
    cid, tenant, user, workspace, channel, title, created, updated = row
    return Conversation(cid, tenant, user, workspace, channel, title, datetime.fromisoformat(created),
                        datetime.fromisoformat(updated))
