"""One connection to a store's database, SQLite or PostgreSQL, spoken to the same way.

Stores that write their SQL by hand (identity, the gateway's conversations) use sqlite3's manner: `execute` with
`?` placeholders returning a cursor, transactions in hand (`BEGIN IMMEDIATE` ... `COMMIT`/`ROLLBACK`). On
PostgreSQL, `PostgresConnection` speaks the same way, so a store runs on either: a SQLite file for one process, a
PostgreSQL database that replicas share.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg2
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from caduceus_schema.migrations import Migrations, upgrade_sqlite_file

log = logging.getLogger("caduceus.schema")
# A unique key broken by an insert, on either engine: stores catch these to say "already exists".
INTEGRITY_ERRORS: tuple[type[Exception], ...] = (sqlite3.IntegrityError, psycopg2.IntegrityError)


def is_postgres(where: Path | str) -> bool:
    return isinstance(where, str) and where.startswith("postgresql")


def open_store(where: Path | str, migrations: Migrations, *, serialize_writes: bool = False) -> Any:
    """A connection to `where` (a SQLite file, or a `postgresql+psycopg2://` URL), its schema migrated to head.

    SQLite files are made 0600 (they may hold hashes of secrets). With `serialize_writes`, each write transaction
    on PostgreSQL takes the store's advisory lock first, as a SQLite writer takes the file's write lock: a store
    that reads then writes in one transaction stays correct with replicas writing beside it.
    """
    if is_postgres(where):
        lock = zlib.crc32(f"caduceus_{migrations.store}_write".encode()) if serialize_writes else None
        return PostgresConnection(str(where), migrations, write_lock=lock)
    path = Path(where)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    upgrade_sqlite_file(migrations, path)  # SchemaTooNew when a newer release migrated it
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA busy_timeout = 5000")
    return db


class PostgresConnection:
    """A psycopg2 connection speaking like sqlite3's (`execute` with `?` placeholders, returning the cursor).

    The connection is opened again when PostgreSQL dropped it (a restart, a failover, an idle timeout): a statement
    outside a transaction, or the BEGIN of one, is tried again once on the new connection; a transaction the drop
    cut short fails (its caller rolls it back and reports the error), and the next one runs on a new connection.
    """

    def __init__(self, url: str, migrations: Migrations, write_lock: int | None = None) -> None:
        self.engine = create_engine(url, poolclass=NullPool)
        with self.engine.begin() as conn:
            migrations.upgrade(conn, self.engine.url.render_as_string(hide_password=True))
        self.write_lock = write_lock
        self.raw: Any = None
        self.conn: Any = None
        self.in_transaction = False
        self._connect()

    def _connect(self) -> None:
        if self.raw is not None:
            with contextlib.suppress(Exception):
                self.raw.close()
        self.raw = self.engine.raw_connection()  # kept: the pool closes the driver's connection with it
        self.conn = self.raw.driver_connection
        self.conn.autocommit = True  # transactions in hand (BEGIN ... COMMIT), as on SQLite

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if sql == "ROLLBACK":
            self.in_transaction = False
            try:
                return self.conn.cursor().execute("ROLLBACK")
            except psycopg2.Error:  # the connection is gone, and the transaction with it
                self._connect()
                return None
        retry = not self.in_transaction
        try:
            return self._run(sql, params)
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            if not retry:
                raise
            log.warning("the connection to PostgreSQL was lost; connecting again")
            self._connect()
            return self._run(sql, params)

    def _run(self, sql: str, params: Sequence[Any]) -> Any:
        cursor = self.conn.cursor()
        if sql == "BEGIN IMMEDIATE":
            cursor.execute("BEGIN")
            self.in_transaction = True
            if self.write_lock is not None:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", (self.write_lock,))
            return cursor
        cursor.execute(sql.replace("?", "%s"), tuple(params))
        if sql == "COMMIT":
            self.in_transaction = False
        return cursor

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.cursor().executemany(sql.replace("?", "%s"), [tuple(row) for row in rows])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.raw.close()
        self.engine.dispose()
