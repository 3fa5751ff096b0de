"""The audit database connection: one engine per URL, its schema (migrated to head), and driver errors in two kinds.

StoreUnavailable means try again later (unreachable, busy, locked); StoreRefused means this data or
this statement will not go in. SQLite writers take the write lock up front (BEGIN IMMEDIATE), so
two appends never read the same chain head.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import create_engine

from caduceus_schema import Migrations

SQLITE_BUSY_TIMEOUT_S = 10.0
MIGRATIONS = Migrations(store="audit", script_location="caduceus_audit:migrations",
                        version_table="audit_schema_version", baseline="0001", baseline_table="audit_record")


class StoreUnavailable(Exception):
    """The database cannot be reached or is busy; the same operation may succeed later."""


class StoreRefused(Exception):
    """The database refused the data itself; retrying the same operation will not help."""


class Database:
    """An engine on the audit database with its schema made sure of once. Thread-safe."""

    def __init__(self, url: str | URL) -> None:
        self.url = make_url(url)
        self.engine = _make_engine(self.url)
        self._schema_lock = threading.Lock()
        self._schema_ready = False

    @property
    def display_url(self) -> str:
        """The URL without its password, for messages."""
        return self.url.render_as_string(hide_password=True)

    def ensure_schema(self) -> None:
        """Migrate the schema to this code's head (caduceus_audit/migrations), once per process.

        Raises StoreUnavailable when the database cannot be reached, SchemaTooNew when a newer release migrated it.
        """
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            with translated_errors(), self.writing() as conn:
                MIGRATIONS.upgrade(conn, self.display_url)
            self._schema_ready = True

    def ping(self) -> None:
        """A round trip to the database. Raises StoreUnavailable when it does not answer."""
        with translated_errors(), self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """A connection in a write transaction (on SQLite it holds the write lock from the start)."""
        with self.engine.connect() as conn:
            conn.execution_options(audit_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection for reads, the schema made sure of and driver errors translated."""
        self.ensure_schema()
        with translated_errors(), self.engine.connect() as conn:
            yield conn

    def close(self) -> None:
        self.engine.dispose()


@contextmanager
def translated_errors() -> Iterator[None]:
    """Turn driver errors into StoreUnavailable (try again later) or StoreRefused (this will not go in)."""
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


def sqlite_path(url: str | URL) -> Path | None:
    """The file of a SQLite URL (None for another engine or an in-memory database)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def _use_wal(dbapi_conn: Any) -> None:
    """Switch a new SQLite connection to WAL. SQLite answers "database is locked" at once, without waiting out its
    busy timeout, when another connection holds a lock while the mode changes (replicas opening a new file
    together): retry for as long as that timeout."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    delay = 0.01
    while True:
        try:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _make_engine(url: URL) -> Engine:
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2)
    if (path := sqlite_path(url)) is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transactions in hand (pysqlite would otherwise begin them lazily) and let readers run beside the writer.
        dbapi_conn.isolation_level = None
        _use_wal(dbapi_conn)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A writer takes the write lock up front, so two appends never both read the same head.
        immediate = conn.get_execution_options().get("audit_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
