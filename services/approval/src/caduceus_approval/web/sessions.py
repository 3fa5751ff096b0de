"""Signed cookies for the UI: who is signed in (with their CSRF token), and an OIDC sign-in in progress.

The cookies are signed (itsdangerous, HMAC-SHA256) with a key only the approval service holds;
a cookie that does not verify is a forgery or tampering, never a session.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from caduceus_contracts import write_once

SESSION_COOKIE = "caduceus_approvals"
LOGIN_COOKIE = "caduceus_approvals_login"
LOGIN_TTL_S = 600


class ForgedCookie(Exception):
    """A cookie whose signature does not verify."""


@dataclass(frozen=True)
class SignedIn:
    tenant: str
    user: str
    csrf: str

    def csrf_ok(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf, token or "")


def load_or_create_secret(path: Path) -> bytes:
    """The cookie-signing key, made (mode 0600) on first start; replicas starting together share one."""
    if path.exists():
        return path.read_bytes()
    return write_once(path, secrets.token_bytes(32))


class CookieJar:
    def __init__(self, secret: bytes, session_ttl_s: float) -> None:
        self._sessions = URLSafeTimedSerializer(secret, salt="caduceus-approvals-session")
        self._logins = URLSafeTimedSerializer(secret, salt="caduceus-approvals-login")
        self.session_ttl_s = session_ttl_s

    def session(self, tenant: str, user: str) -> str:
        return self._sessions.dumps({"tenant": tenant, "user": user, "csrf": secrets.token_urlsafe(24)})

    def signed_in(self, cookie: str | None) -> SignedIn | None:
        """The person a session cookie names; None when absent or expired; ForgedCookie when it does not verify."""
        if not cookie:
            return None
        try:
            data = self._sessions.loads(cookie, max_age=self.session_ttl_s)
        except SignatureExpired:
            return None
        except BadSignature:
            raise ForgedCookie("the session cookie's signature does not verify") from None
        return SignedIn(data["tenant"], data["user"], data["csrf"])

    def login(self, state: str, nonce: str, verifier: str, next_path: str) -> str:
        return self._logins.dumps({"state": state, "nonce": nonce, "verifier": verifier, "next": next_path})

    def pending_login(self, cookie: str | None) -> dict[str, str] | None:
        if not cookie:
            return None
        try:
            return self._logins.loads(cookie, max_age=LOGIN_TTL_S)
        except BadSignature:
            return None
