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

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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
from caduceus_schema import INTEGRITY_ERRORS, Migrations, is_postgres, open_store

UPSERT_LINK = ("INSERT INTO platform_links VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, platform, platform_user) "
               'DO UPDATE SET "user" = excluded."user", linked_by = excluded.linked_by, linked_at = excluded.linked_at')
MIGRATIONS = Migrations(store="identity", script_location="caduceus_identity:migrations",
                        version_table="identity_schema_version", baseline="0001", baseline_table="service_accounts")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _at(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


class IdentityStore:
    """Service accounts, platform links and pairing codes; safe to use from several threads.

    `where` is a SQLite file, or a PostgreSQL URL (`postgresql+psycopg2://user:pass@host/db`)."""

    def __init__(self, where: Path | str) -> None:
        self.path = None if is_postgres(where) else Path(where)
        # Writers read then write (a pairing's lockout count, a code's use): on PostgreSQL they take the store's
        # lock, as SQLite writers take its write lock.
        self._db: Any = open_store(where, MIGRATIONS, serialize_writes=True)
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
