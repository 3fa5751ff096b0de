"""The PostgreSQL database an operator gives the stack (`caduceus up --database-url`): checked before any service
starts, so a wrong URL is one clear error rather than four services failing to start."""

from __future__ import annotations

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.pool import NullPool

from caduceus_embedded.servers import ServerFailed


def check_database(url: str) -> str:
    """Connect once to `url`; its safe name (no password) when it answers, else ServerFailed saying why."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ServerFailed(f"--database-url is not a database URL: {exc}") from None
    if parsed.get_backend_name() != "postgresql":
        raise ServerFailed(f"--database-url must name a PostgreSQL database (postgresql+psycopg2://user:pass@host/db),"
                           f" not {parsed.get_backend_name()!r}: without it the stack keeps SQLite files in its state dir")
    shown = parsed.render_as_string(hide_password=True)
    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 10})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise ServerFailed(f"cannot use the database {shown}: {reason}") from None
    finally:
        engine.dispose()
    return shown
