"""Signed cookies for the web chat: who is signed in (their CSRF token and the ID token the gateway speaks for them
with), and an OIDC sign-in in progress.

The cookies are signed (itsdangerous, HMAC-SHA256) with a key only the gateway holds, HttpOnly, SameSite=Lax and
Secure over https. A cookie that does not verify is a forgery or tampering, never a session. The ID token is the
person's own, in their own browser; identity verifies it again on every message.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from caduceus_contracts import write_once

SESSION_COOKIE = "caduceus_chat"
LOGIN_COOKIE = "caduceus_chat_login"
LOGIN_TTL_S = 600


class ForgedCookie(Exception):
    """A cookie whose signature does not verify."""


@dataclass(frozen=True)
class SignedIn:
    tenant: str
    user: str
    csrf: str
    token: str = field(repr=False)
    expires_at: float
    groups: tuple[str, ...] = ()  # the provider's groups at sign-in, which may be what makes them a member

    def csrf_ok(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf, token or "")

    @property
    def channel(self) -> str:
        """The web chat is the person's own channel: the memory of their DMs and the CLI, never a shared one's."""
        return f"web:{self.user}"


def load_or_create_secret(path: Path) -> bytes:
    """The cookie-signing key, made (mode 0600) on first start; replicas starting together share one (an O_EXCL
    file could be read empty by the second replica, before the first wrote it)."""
    if path.exists():
        return path.read_bytes()
    return write_once(path, secrets.token_bytes(32))


class CookieJar:
    def __init__(self, secret: bytes, session_ttl_s: float) -> None:
        self._sessions = URLSafeTimedSerializer(secret, salt="caduceus-chat-session")
        self._logins = URLSafeTimedSerializer(secret, salt="caduceus-chat-login")
        self.session_ttl_s = session_ttl_s

    def session(self, tenant: str, user: str, token: str, token_expires_at: float | None,
                groups: tuple[str, ...] = ()) -> tuple[str, int]:
        """(cookie, max age): the session lasts no longer than the ID token it carries."""
        expires_at = time.time() + self.session_ttl_s
        if token_expires_at is not None:
            expires_at = min(expires_at, token_expires_at)
        cookie = self._sessions.dumps({"tenant": tenant, "user": user, "csrf": secrets.token_urlsafe(24),
                                       "token": token, "exp": expires_at, "groups": list(groups)})
        return cookie, max(0, int(expires_at - time.time()))

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
        if data["exp"] <= time.time():
            return None
        return SignedIn(data["tenant"], data["user"], data["csrf"], data["token"], data["exp"],
                        tuple(data.get("groups", ())))

    def login(self, state: str, nonce: str, verifier: str, next_path: str) -> str:
        return self._logins.dumps({"state": state, "nonce": nonce, "verifier": verifier, "next": next_path})

    def pending_login(self, cookie: str | None) -> dict[str, str] | None:
        if not cookie:
            return None
        try:
            return self._logins.loads(cookie, max_age=LOGIN_TTL_S)
        except BadSignature:
            return None
