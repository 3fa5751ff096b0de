"""Schema migrations for every SQL store (`Migrations`), and one connection manner for stores that write their SQL
by hand, on SQLite or PostgreSQL (`open_store`)."""

from caduceus_schema.connection import INTEGRITY_ERRORS, PostgresConnection, is_postgres, open_store
from caduceus_schema.migrations import Migrations, SchemaTooNew, upgrade_sqlite_file

__all__ = ["INTEGRITY_ERRORS", "Migrations", "PostgresConnection", "SchemaTooNew", "is_postgres", "open_store",
           "upgrade_sqlite_file"]
