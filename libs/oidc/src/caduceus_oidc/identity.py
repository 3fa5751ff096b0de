"""What verifying a credential answers: the identity it proves, or a refusal that says what to do."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

TOKEN_REMEDY = (
    "get a fresh token from your identity provider (embedded stack: "
    "`caduceus identity token --tenant <tenant> --user <user>`) and send the message again"
)


class Refused(Exception):
    """A credential or message that will not be admitted: `reason` says why, `remedy` what the person can do."""

    def __init__(self, reason: str, remedy: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.remedy = remedy

    @property
    def reply_text(self) -> str:
        """The text a person sees in the refused chat reply."""
        return f"{self.reason}; {self.remedy}"


class TokenRefused(Refused):
    """An OIDC token failed verification; the reason names the check (never the token)."""

    def __init__(self, reason: str, remedy: str = TOKEN_REMEDY) -> None:
        super().__init__(reason, remedy)


@dataclass(frozen=True)
class VerifiedIdentity:
    """Who a credential proved someone is: the name they go by, the tenant, and what their provider says."""

    subject: str
    tenant: str
    groups: tuple[str, ...]
    email: str | None
    issuer: str
    expires_at: datetime | None
    email_verified: bool = False
