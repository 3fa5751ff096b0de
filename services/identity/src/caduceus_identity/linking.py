"""Chat-platform people and the integrations that speak for them: pairing codes and service-account keys.

Pure rules, no I/O. A chat integration (Slack, Discord) authenticates with a service account's
API key and says which platform user wrote a message. That platform user is linked to a person of
the tenant, by an address the platform verified or by a pairing code a tenant admin approves.
Codes are random, stored only as salted hashes, expire, and too many wrong codes lock approvals.
API keys are shown once and stored as hashes.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

# No 0/O or 1/I: a person reads the code out of a chat and types it.
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 8
API_KEY_PREFIX = "cad_sa_"
_API_KEY = re.compile(r"^cad_sa_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class PairingRules:
    """How long a code lives, and how many wrong codes lock a tenant's platform for how long."""

    code_ttl_s: float = 3600.0
    max_failures: int = 5
    lockout_s: float = 3600.0
    # Codes waiting per tenant and platform: a flood of strangers cannot grow the table.
    max_pending: int = 20


class PairingRefused(Exception):
    """A pairing code was not approved; the message says why and what to do."""


@dataclass(frozen=True)
class ServiceAccount:
    """A chat integration's identity in one tenant: which platforms it may speak for."""

    account_id: str
    tenant: str
    name: str
    platforms: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class PlatformLink:
    tenant: str
    platform: str
    platform_user: str
    user: str
    linked_by: str
    linked_at: datetime


@dataclass(frozen=True)
class PairingRequest:
    """What a platform user is told: a fresh code, or why there is none."""

    status: str  # "issued", "pending" (a code was already sent), "locked", "full"
    code: str | None = None
    expires_at: datetime | None = None


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def shown_code(code: str) -> str:
    """How a code is shown to people: ABCD-EFGH."""
    return f"{code[:4]}-{code[4:]}"


def normalized_code(text: str) -> str:
    """A typed code without separators or case, as stored."""
    return re.sub(r"[\s-]", "", text).upper()


def hash_secret(secret: str, salt: bytes = b"") -> str:
    return hashlib.sha256(salt + secret.encode()).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def new_api_key() -> tuple[str, str, str]:
    """(account id, secret, the key as shown once): `cad_sa_<id>_<secret>`."""
    account_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    return account_id, secret, f"{API_KEY_PREFIX}{account_id}_{secret}"


def parse_api_key(text: str) -> tuple[str, str] | None:
    """(account id, secret) of something shaped like an API key, else None."""
    found = _API_KEY.match(text.strip())
    return (found.group(1), found.group(2)) if found else None


def looks_like_api_key(text: str) -> bool:
    return text.strip().startswith(API_KEY_PREFIX)
