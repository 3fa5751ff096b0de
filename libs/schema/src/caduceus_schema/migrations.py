"""Schema migrations for every SQL store: Alembic scripts shipped inside each service's package.

A service describes its migrations once (`Migrations`) and calls `upgrade()` at start with a connection in a write
transaction: the schema goes to head in that transaction, so two replicas starting together migrate once. A database
made before migrations existed (tables present, no version table) is taken as the first migration's schema, which is
the schema the previous release created. A database at a revision this code does not know was migrated by a newer
release: `SchemaTooNew`, never a guess.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, create_engine, event, inspect, text

__all__ = ["Migrations", "SchemaTooNew", "upgrade_sqlite_file"]


class SchemaTooNew(Exception):
    """The database was migrated by a newer Caduceus than this one."""


@dataclass(frozen=True)
class Migrations:
    """One store's migrations: where the scripts are, which table records the revision, how to recognise the
    unversioned schema of the release before migrations existed."""

    store: str  # what the store is called in messages: "audit", "identity"
    script_location: str  # "package:folder", the folder holding versions/
    version_table: str
    baseline: str  # the first revision: the schema as the previous release created it
    baseline_table: str  # a table that release always created

    def scripts(self) -> ScriptDirectory:
        config = Config()
        config.set_main_option("script_location", self.script_location)
        return ScriptDirectory.from_config(config)

    def head(self) -> str:
        return self.scripts().get_current_head() or self.baseline

    def current(self, connection: Connection) -> str | None:
        """The database's revision (None: not versioned yet)."""
        context = MigrationContext.configure(connection, opts={"version_table": self.version_table})
        return context.get_current_revision()

    def upgrade(self, connection: Connection, where: str) -> str:
        """Bring the schema to head in the connection's transaction; return the revision it is at.

        `where` names the database in messages (a path or a URL without its password). Raises SchemaTooNew.
        """
        if connection.dialect.name == "postgresql":
            # Replicas starting at once wait here for the first one's migration, in this transaction.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                               {"key": zlib.crc32(self.version_table.encode())})
        scripts = self.scripts()
        head = scripts.get_current_head()
        context = MigrationContext.configure(connection, opts={"version_table": self.version_table})
        current = context.get_current_revision()
        if current is not None and current not in {rev.revision for rev in scripts.walk_revisions()}:
            raise SchemaTooNew(
                f"the {self.store} database {where} is at schema revision {current!r}, which this Caduceus does not "
                f"know (it knows up to {head!r}): a newer release migrated it. Run that release (or a newer one), "
                "or restore a backup taken before the upgrade (caduceus restore); never downgrade a database in place.")
        if current is None and inspect(connection).has_table(self.baseline_table):
            context.stamp(scripts, self.baseline)  # made by the release before migrations: its schema is the baseline
        if context.get_current_revision() == head:
            return head
        environment = EnvironmentContext(Config(), scripts, fn=lambda rev, _ctx: scripts._upgrade_revs(head, rev),
                                         destination_rev=head)
        try:
            with environment:
                # Both engines roll DDL back with the transaction it runs in (alembic assumes not, for SQLite).
                environment.configure(connection=connection, version_table=self.version_table, transactional_ddl=True)
                environment.run_migrations()
        except CommandError as exc:
            raise SchemaTooNew(f"the {self.store} database {where} cannot be migrated: {exc}") from exc
        return head


def upgrade_sqlite_file(migrations: Migrations, path: Path) -> str:
    """Migrate a SQLite file to head under its write lock (for a store that talks to it with sqlite3 itself)."""
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 10.0})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # transactions in hand, so the next line takes the write lock up front

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    try:
        with engine.begin() as connection:
            return migrations.upgrade(connection, str(path))
    finally:
        engine.dispose()
