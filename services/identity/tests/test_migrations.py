"""identity.db's schema is migrated, never guessed: a database the previous release (7f37293) made, with its
service accounts, links, pending pairings, lockout counts and unpublished changes, is upgraded in place and every
one of them still works; the migrations build the schema that release had; a newer database is refused."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from caduceus_embedded.layout import copy_default_files
from caduceus_identity.adapters.store import MIGRATIONS, IdentityStore
from caduceus_identity.linking import PairingRefused, PairingRules, hash_secret, new_api_key
from caduceus_schema import SchemaTooNew

OLD_SCHEMA = Path(__file__).parent / "data" / "schema-7f37293.sql"
NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def old_release_database(path: Path) -> str:
    """identity.db as 7f37293 left it (its DDL from the test data, rows as its store wrote them); the API key."""
    account_id, secret, key = new_api_key()
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA.read_text())
    at = NOW.isoformat()
    db.execute("INSERT INTO service_accounts VALUES (?, 'acme', 'slack-bot', '[\"slack\"]', ?, ?, NULL)",
               (account_id, hash_secret(secret), at))
    db.execute("INSERT INTO platform_links VALUES ('acme', 'slack', 'U1', 'alice', 'email', ?)", (at,))
    db.execute("INSERT INTO pairing_codes VALUES ('acme', 'slack', 'U2', ?, ?, ?, ?)",
               (hash_secret("ABCDEFGH", b"salt"), b"salt", at, (NOW + timedelta(hours=1)).isoformat()))
    db.execute("INSERT INTO pairing_failures VALUES ('acme', 'discord', ?)", (at,))
    db.execute("INSERT INTO identity_changes (event_id, tenant, action, actor, subject, detail, occurred_at) "
               "VALUES ('e1', 'acme', 'service-account.created', 'carol', 'slack-bot', 'for slack', ?)", (at,))
    db.commit()
    db.close()
    return key


def schema_of(path: Path) -> list[tuple]:
    db = sqlite3.connect(path)
    rows = db.execute("SELECT type, name, tbl_name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' "
                      "AND name != ? ORDER BY name", (MIGRATIONS.version_table,)).fetchall()
    columns = [(table, *column) for _kind, table, _t in rows if _kind == "table"
               for column in db.execute(f"PRAGMA table_info({table})").fetchall()]
    db.close()
    return rows + columns


def test_a_database_of_the_previous_release_is_upgraded_and_everything_in_it_still_works(tmp_path: Path) -> None:
    path = tmp_path / "identity.db"
    key = old_release_database(path)
    store = IdentityStore(path)

    assert sqlite3.connect(path).execute(f"SELECT version_num FROM {MIGRATIONS.version_table}").fetchone() == (
        MIGRATIONS.head(),)
    account = store.authenticate(key)
    assert account is not None and (account.tenant, account.name) == ("acme", "slack-bot")
    assert [(link.platform_user, link.user) for link in store.links("acme")] == [("U1", "alice")]
    assert [(platform, user) for platform, user, _ in store.pending_pairings("acme", NOW)] == [("slack", "U2")]
    assert [(c.event_id, c.action) for c in store.unpublished_changes()] == [("e1", "service-account.created")]
    rules = PairingRules(max_failures=2)
    with pytest.raises(PairingRefused, match="now locked"):  # the wrong code typed before the upgrade still counts
        store.approve_pairing("acme", "discord", "WRONGCOD", "bob", "carol", NOW, rules)


def test_the_migrations_build_the_schema_of_the_previous_release(tmp_path: Path) -> None:
    IdentityStore(tmp_path / "new.db").close()
    sqlite3.connect(tmp_path / "old.db").executescript(OLD_SCHEMA.read_text())
    assert schema_of(tmp_path / "new.db") == schema_of(tmp_path / "old.db")


def test_a_database_migrated_by_a_newer_release_is_refused_saying_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "identity.db"
    IdentityStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"UPDATE {MIGRATIONS.version_table} SET version_num = '0099'")
    db.commit()
    db.close()
    with pytest.raises(SchemaTooNew, match="newer release.*caduceus restore"):
        IdentityStore(path)


def test_identity_refuses_to_start_on_a_database_a_newer_release_migrated(tmp_path: Path) -> None:
    copy_default_files(tmp_path)
    IdentityStore(tmp_path / "identity.db").close()
    db = sqlite3.connect(tmp_path / "identity.db")
    db.execute(f"UPDATE {MIGRATIONS.version_table} SET version_num = '0099'")
    db.commit()
    db.close()
    env = {**os.environ, "CADUCEUS_STATE_DIR": str(tmp_path), "CADUCEUS_OIDC_ISSUER_URL": "http://127.0.0.1:9"}
    started = subprocess.run([sys.executable, "-m", "caduceus_identity"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert started.returncode == 2
    assert "identity cannot start" in started.stderr and "newer release" in started.stderr
