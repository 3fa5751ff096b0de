"""Identity's own records in SQLite (CADUCEUS_IDENTITY_DB, default `<state_dir>/identity.db`) or PostgreSQL
(CADUCEUS_IDENTITY_DB_URL, for replicas sharing one database):
service accounts (key hashes only), platform links, pairing codes (salted hashes) and lockouts.

The identity service reads it on every integration message; the admin CLI writes it. Its schema is migrated to
head when the store opens (caduceus_identity/migrations). Every change to who
may speak for a tenant is also written, in the same transaction, to an outbox (`identity_changes`) that the
identity service publishes as `identity.changed` events: the audit trail gets each change exactly once, even
one made while the service was down.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from caduceus_contracts import IdentityChanged, new_id
from caduceus_identity.linking import (
    PairingRefused,
    PairingRequest,
    PairingRules,
    PlatformLink,
    ServiceAccount,
    hash_secret,
    new_api_key,
    new_code,
    normalized_code,
    parse_api_key,
    same_hash,
)
from caduceus_schema import Migrations, upgrade_sqlite_file

UPSERT_LINK = ("INSERT INTO platform_links VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, platform, platform_user) "
               'DO UPDATE SET "user" = excluded."user", linked_by = excluded.linked_by, linked_at = excluded.linked_at')
INTEGRITY_ERRORS: tuple[type[Exception], ...] = (sqlite3.IntegrityError, psycopg2.IntegrityError)
MIGRATIONS = Migrations(store="identity", script_location="caduceus_identity:migrations",
                        version_table="identity_schema_version", baseline="0001", baseline_table="service_accounts")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _at(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


log = logging.getLogger("caduceus.identity")
# Writers on PostgreSQL take this transaction-scoped advisory lock, as SQLite writers take its write lock.
WRITE_LOCK = zlib.crc32(b"caduceus_identity_write")


class _Postgres:
    """A psycopg2 connection speaking like sqlite3's (`execute` with `?` placeholders, returning the cursor).

    The connection is opened again when PostgreSQL dropped it (a restart, a failover, an idle timeout): a statement
    outside a transaction, or the BEGIN of one, is tried again once on the new connection; a transaction the drop
    cut short fails (its caller rolls it back and reports the error), and the next one runs on a new connection.
    """

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url, poolclass=NullPool)
        with self.engine.begin() as conn:
            MIGRATIONS.upgrade(conn, self.engine.url.render_as_string(hide_password=True))
        self.raw = self.conn = None
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
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
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


class IdentityStore:
    """Service accounts, platform links and pairing codes; safe to use from several threads.

    `where` is a SQLite file, or a PostgreSQL URL (`postgresql+psycopg2://user:pass@host/db`)."""

    def __init__(self, where: Path | str) -> None:
        self.path = where if isinstance(where, Path) else None
        if isinstance(where, str) and where.startswith("postgresql"):
            self._db: Any = _Postgres(where)
        else:
            path = Path(where)
            self.path = path
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            upgrade_sqlite_file(MIGRATIONS, path)  # SchemaTooNew when a newer release migrated it
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout = 5000")
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _changing(self) -> Iterator[None]:
        """One write transaction: the change and its outbox row are stored together or not at all."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def record_refusal(self, tenant: str, action: str, actor: str, subject: str, now: datetime, detail: str) -> None:
        """Keep an administrative attempt that was refused before it changed anything (for audit, like a change)."""
        with self._changing():
            self._record(tenant, action, actor, subject, now, detail)

    def _record(self, tenant: str, action: str, actor: str, subject: str, now: datetime, detail: str = "") -> None:
        self._db.execute("INSERT INTO identity_changes (event_id, tenant, action, actor, subject, detail, occurred_at)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?)", (new_id(), tenant, action, actor, subject, detail, _iso(now)))

    # --- the outbox ---

    def unpublished_changes(self, limit: int = 100) -> list[IdentityChanged]:
        """Changes not yet on the bus, oldest first (each keeps its event id, so a re-publish is stored once)."""
        rows = self._db.execute("SELECT event_id, tenant, action, actor, subject, detail, occurred_at FROM "
                                "identity_changes WHERE published = 0 ORDER BY occurred_at LIMIT ?", (limit,)).fetchall()
        return [IdentityChanged(event_id=row[0], tenant=row[1], action=row[2], actor=row[3], subject=row[4],
                                detail=row[5], occurred_at=_at(row[6])) for row in rows]

    def mark_published(self, event_ids: list[str]) -> None:
        with self._lock:
            self._db.executemany("UPDATE identity_changes SET published = 1 WHERE event_id = ?",
                                 [(event_id,) for event_id in event_ids])

    # --- service accounts ---

    def create_service_account(self, tenant: str, name: str, platforms: tuple[str, ...],
                               now: datetime, actor: str) -> tuple[ServiceAccount, str]:
        """A new account and its API key, which is never stored and so is shown only now."""
        account_id, secret, key = new_api_key()
        try:
            with self._changing():
                self._db.execute("INSERT INTO service_accounts VALUES (?, ?, ?, ?, ?, ?, NULL)",
                                 (account_id, tenant, name, json.dumps(list(platforms)), hash_secret(secret),
                                  _iso(now)))
                self._record(tenant, "service-account.created", actor, name, now, f"for {', '.join(platforms)}")
        except INTEGRITY_ERRORS:
            raise ValueError(f"tenant {tenant!r} already has a service account named {name!r}; revoke it "
                             "first or choose another name") from None
        return ServiceAccount(account_id, tenant, name, platforms, now), key

    def service_accounts(self, tenant: str | None = None) -> list[ServiceAccount]:
        query = "SELECT account_id, tenant, name, platforms, created_at, revoked_at FROM service_accounts"
        rows = self._db.execute(query + (" WHERE tenant = ?" if tenant else "") + " ORDER BY created_at",
                                (tenant,) if tenant else ()).fetchall()
        return [_account(row) for row in rows]

    def revoke_service_account(self, tenant: str, name: str, now: datetime, actor: str) -> bool:
        with self._changing():
            cursor = self._db.execute("UPDATE service_accounts SET revoked_at = ? WHERE tenant = ? AND name = ? "
                                      "AND revoked_at IS NULL", (_iso(now), tenant, name))
            if cursor.rowcount:
                self._record(tenant, "service-account.revoked", actor, name, now)
        return cursor.rowcount > 0

    def authenticate(self, key: str) -> ServiceAccount | None:
        """The live account an API key belongs to, or None (unknown, wrong secret or revoked)."""
        parsed = parse_api_key(key)
        if parsed is None:
            return None
        account_id, secret = parsed
        row = self._db.execute("SELECT account_id, tenant, name, platforms, created_at, revoked_at, key_hash "
                               "FROM service_accounts WHERE account_id = ?", (account_id,)).fetchone()
        if row is None or not same_hash(row[6], hash_secret(secret)) or row[5] is not None:
            return None
        return _account(row[:6])

    # --- links ---

    def link(self, tenant: str, platform: str, platform_user: str) -> PlatformLink | None:
        row = self._db.execute("SELECT * FROM platform_links WHERE tenant = ? AND platform = ? AND platform_user = ?",
                               (tenant, platform, platform_user)).fetchone()
        return _link(row) if row else None

    def links(self, tenant: str) -> list[PlatformLink]:
        rows = self._db.execute("SELECT * FROM platform_links WHERE tenant = ? ORDER BY platform, platform_user",
                                (tenant,)).fetchall()
        return [_link(row) for row in rows]

    def add_link(self, tenant: str, platform: str, platform_user: str, user: str, linked_by: str,
                 now: datetime) -> PlatformLink:
        with self._changing():
            self._db.execute(UPSERT_LINK,
                             (tenant, platform, platform_user, user, linked_by, _iso(now)))
            self._db.execute("DELETE FROM pairing_codes WHERE tenant = ? AND platform = ? AND platform_user = ?",
                             (tenant, platform, platform_user))
            self._record(tenant, "link.added", "identity", f"{platform}:{platform_user}", now, f"{user}, {linked_by}")
        return PlatformLink(tenant, platform, platform_user, user, linked_by, now)

    def remove_link(self, tenant: str, platform: str, platform_user: str, now: datetime, actor: str) -> bool:
        with self._changing():
            cursor = self._db.execute("DELETE FROM platform_links WHERE tenant = ? AND platform = ? AND "
                                      "platform_user = ?", (tenant, platform, platform_user))
            if cursor.rowcount:
                self._record(tenant, "link.removed", actor, f"{platform}:{platform_user}", now)
        return cursor.rowcount > 0

    # --- pairing ---

    def request_pairing(self, tenant: str, platform: str, platform_user: str, now: datetime,
                        rules: PairingRules) -> PairingRequest:
        """A code for an unlinked platform user: a new one, or why not (one is pending, locked out, too many)."""
        with self._lock:
            self._expire(now)
            if self._locked_until(tenant, platform, now, rules) is not None:
                return PairingRequest("locked")
            pending = self._db.execute("SELECT expires_at FROM pairing_codes WHERE tenant = ? AND platform = ? AND "
                                       "platform_user = ?", (tenant, platform, platform_user)).fetchone()
            if pending is not None:
                return PairingRequest("pending", expires_at=_at(pending[0]))
            waiting = self._db.execute("SELECT COUNT(*) FROM pairing_codes WHERE tenant = ? AND platform = ?",
                                       (tenant, platform)).fetchone()[0]
            if waiting >= rules.max_pending:
                return PairingRequest("full")
            code, salt = new_code(), os.urandom(16)
            expires = now + timedelta(seconds=rules.code_ttl_s)
            self._db.execute("INSERT INTO pairing_codes VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (tenant, platform, platform_user, hash_secret(code, salt), salt, _iso(now),
                              _iso(expires)))
        return PairingRequest("issued", code, expires)

    def pending_pairings(self, tenant: str, now: datetime) -> list[tuple[str, str, datetime]]:
        """(platform, platform user, expires at) of every code waiting for approval."""
        with self._lock:
            self._expire(now)
        rows = self._db.execute("SELECT platform, platform_user, expires_at FROM pairing_codes WHERE tenant = ? "
                                "ORDER BY created_at", (tenant,)).fetchall()
        return [(platform, user, _at(expires)) for platform, user, expires in rows]

    def approve_pairing(self, tenant: str, platform: str, code: str, user: str, approver: str, now: datetime,
                        rules: PairingRules) -> PlatformLink:
        """Link the platform user who got `code` to `user`; PairingRefused when locked out or the code is wrong."""
        typed = normalized_code(code)
        refused: PairingRefused | None = None
        with self._changing():
            self._expire(now)
            locked = self._locked_until(tenant, platform, now, rules)
            rows = self._db.execute("SELECT platform_user, code_hash, salt FROM pairing_codes WHERE tenant = ? "
                                    "AND platform = ?", (tenant, platform)).fetchall()
            match = next((row[0] for row in rows if same_hash(row[1], hash_secret(typed, bytes(row[2])))), None)
            if locked is not None:
                refused = PairingRefused(f"pairing for {platform} in tenant {tenant!r} is locked until "
                                         f"{locked.isoformat(timespec='seconds')} after {rules.max_failures} wrong "
                                         "codes; wait, then ask the person for the code again")
            elif match is None:
                self._db.execute("INSERT INTO pairing_failures VALUES (?, ?, ?)", (tenant, platform, _iso(now)))
                left = rules.max_failures - self._recent_failures(tenant, platform, now, rules)
                refused = PairingRefused(
                    f"no pending {platform} pairing in tenant {tenant!r} has that code (it may have expired); "
                    + (f"{left} more wrong code(s) lock pairing for {rules.lockout_s / 60:g} minutes"
                       if left > 0 else f"pairing is now locked for {rules.lockout_s / 60:g} minutes"))
            if refused is not None:
                # The refusal is audited (never the code typed); a lockout stays in force whatever happens next.
                self._record(tenant, "pairing.refused", approver, f"{platform}:?", now, str(refused))
            else:
                self._db.execute("DELETE FROM pairing_codes WHERE tenant = ? AND platform = ? AND platform_user = ?",
                                 (tenant, platform, match))
                self._db.execute(UPSERT_LINK,
                                 (tenant, platform, match, user, f"pairing approved by {approver}", _iso(now)))
                self._record(tenant, "pairing.approved", approver, f"{platform}:{match}", now, f"linked to {user}")
        if refused is not None:
            raise refused
        return PlatformLink(tenant, platform, match, user, f"pairing approved by {approver}", now)

    def _expire(self, now: datetime) -> None:
        self._db.execute("DELETE FROM pairing_codes WHERE expires_at <= ?", (_iso(now),))

    def _recent_failures(self, tenant: str, platform: str, now: datetime, rules: PairingRules) -> int:
        since = _iso(now - timedelta(seconds=rules.lockout_s))
        return self._db.execute("SELECT COUNT(*) FROM pairing_failures WHERE tenant = ? AND platform = ? AND "
                                "failed_at > ?", (tenant, platform, since)).fetchone()[0]

    def _locked_until(self, tenant: str, platform: str, now: datetime, rules: PairingRules) -> datetime | None:
        """When too many wrong codes were typed within the lockout window: until the window passes the last."""
        since = _iso(now - timedelta(seconds=rules.lockout_s))
        rows = self._db.execute("SELECT failed_at FROM pairing_failures WHERE tenant = ? AND platform = ? AND "
                                "failed_at > ? ORDER BY failed_at", (tenant, platform, since)).fetchall()
        if len(rows) < rules.max_failures:
            return None
        return _at(rows[-1][0]) + timedelta(seconds=rules.lockout_s)


def _account(row: tuple) -> ServiceAccount:
    return ServiceAccount(row[0], row[1], row[2], tuple(json.loads(row[3])), _at(row[4]), _at(row[5]))


def _link(row: tuple) -> PlatformLink:
    return PlatformLink(row[0], row[1], row[2], row[3], row[4], _at(row[5]))
