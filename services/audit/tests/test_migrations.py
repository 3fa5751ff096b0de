"""The audit schema is migrated, never guessed: a database the previous release (7f37293) made, with its records
and checkpoints, is upgraded in place with every row kept and `caduceus audit verify` passing; what the migrations
build is exactly what the code maps; a database a newer release migrated is refused with what to do."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, create_engine, inspect, select, text
from sqlmodel import SQLModel
from typer.testing import CliRunner

from caduceus.cli import app
from caduceus_audit import AuditStore, SchemaTooNew
from caduceus_audit.adapters.database import MIGRATIONS
from caduceus_audit.adapters.tables import CHECKPOINTS, RECORDS
from caduceus_audit.testing import AUDIT, checkpoint, governed_session, record_published

OLD_SCHEMA = Path(__file__).parent / "data" / "schema-7f37293"


def old_release_database(url: str, schema_file: str, rows_from: AuditStore) -> None:
    """A database with the tables 7f37293 created (its DDL, from the test data) and the rows of `rows_from`."""
    engine = create_engine(url)
    with engine.begin() as conn:
        for statement in (OLD_SCHEMA / schema_file).read_text().split(";\n"):
            if statement.strip():
                conn.execute(text(statement))
        old = MetaData()
        old.reflect(conn)
        for table in (RECORDS, CHECKPOINTS):
            with rows_from.engine.connect() as source:
                # Without ids, as the old release inserted them: the database numbers them.
                columns = [column for column in table.c if column.name != "id"]
                rows = [dict(row._mapping) for row in source.execute(select(*columns).order_by(table.c.id))]
            conn.execute(old.tables[table.name].insert(), rows)
    engine.dispose()


def trail(tmp_path: Path) -> AuditStore:
    """Two tenants' governed sessions and a signed checkpoint each, stored by this code in a scratch database."""
    store = AuditStore(f"sqlite:///{tmp_path}/scratch.db")
    for tenant in ("acme", "globex"):
        record_published(store, governed_session(tenant, f"{tenant}-s1"))
        store.checkpoints.add(checkpoint(store, tenant, 0, 10))
    return store


def contents(store: AuditStore) -> list[tuple]:
    with store.engine.connect() as conn:
        columns = [column for column in RECORDS.c if column.name != "id"]
        return [tuple(row) for row in conn.execute(select(*columns).order_by(RECORDS.c.id))]


def test_a_database_of_the_previous_release_is_upgraded_with_every_record_and_audit_verify_passes(
        db_url: str, tmp_path: Path) -> None:
    source = trail(tmp_path)
    dialect = "postgresql" if db_url.startswith("postgresql") else "sqlite"
    old_release_database(db_url, f"{dialect}.sql", source)

    upgraded = AuditStore(db_url)
    upgraded.ensure_schema()

    with upgraded.engine.connect() as conn:
        assert MIGRATIONS.current(conn) == MIGRATIONS.head()
    assert contents(upgraded) == contents(source) and len(contents(source)) > 20
    assert upgraded.checkpoints.events("acme") == source.checkpoints.events("acme")
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "audit.pub").write_bytes(AUDIT.public_pem())
    verified = CliRunner().invoke(app, ["audit", "verify", "--db", db_url, "--keys-dir", str(keys), "--json"])
    assert verified.exit_code == 0, verified.output
    report = json.loads(verified.stdout)
    assert [(t["tenant"], t["records"], t["checkpoints"]) for t in report["tenants"]] == [
        ("acme", len(contents(source)) // 2, 1), ("globex", len(contents(source)) // 2, 1)]
    # The upgraded chain goes on: a new session appends after the old records.
    record_published(upgraded, governed_session("acme", "after-upgrade"))
    assert CliRunner().invoke(app, ["audit", "verify", "--db", db_url, "--keys-dir", str(keys)]).exit_code == 0


def test_a_trace_id_added_by_the_old_alter_table_gets_its_index(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/audit.db"
    source = trail(tmp_path)
    old_release_database(url, "sqlite-trace-id-by-alter.sql", source)
    store = AuditStore(url)
    store.ensure_schema()
    with store.engine.connect() as conn:
        assert "ix_audit_record_trace_id" in {index["name"] for index in inspect(conn).get_indexes("audit_record")}
    assert contents(store) == contents(source)


def test_the_migrations_build_exactly_the_tables_the_code_maps(db_url: str) -> None:
    store = AuditStore(db_url)
    store.ensure_schema()
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_object": not_the_version_table})
        differences = compare_metadata(context, SQLModel.metadata)
    assert differences == []


def not_the_version_table(_object: object, name: str | None, kind: str, _reflected: bool, _compare_to: object) -> bool:
    return not (kind == "table" and name == MIGRATIONS.version_table)


def test_a_database_migrated_by_a_newer_release_is_refused_saying_what_to_do(db_url: str, tmp_path: Path) -> None:
    AuditStore(db_url).ensure_schema()
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {MIGRATIONS.version_table} SET version_num = '0099'"))
    engine.dispose()
    with pytest.raises(SchemaTooNew, match="newer release"):
        AuditStore(db_url).ensure_schema()
    refused = CliRunner().invoke(app, ["audit", "verify", "--db", db_url])
    assert refused.exit_code == 2
    said = " ".join(refused.output.split())
    assert "'0099'" in said and "newer release" in said and "caduceus restore" in said


def test_replicas_starting_together_migrate_once(db_url: str) -> None:
    stores = [AuditStore(db_url) for _ in range(4)]
    start = threading.Barrier(len(stores))
    failures: list[BaseException] = []

    def migrate(store: AuditStore) -> None:
        start.wait()
        try:
            store.ensure_schema()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=migrate, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "replicas deadlocked migrating"
    assert failures == []
    with stores[0].engine.connect() as conn:
        assert MIGRATIONS.current(conn) == MIGRATIONS.head()
    for store in stores:
        store.close()
