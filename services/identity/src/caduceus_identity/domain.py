"""Who may speak to Caduceus, and on what terms: the tenant directory and admission of a chat message.

Pure logic, no I/O: a verified identity (from an OIDC
token) plus the message it came with either becomes a `SessionGrant` or a `Refused`
saying what was wrong and what the person can do about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from caduceus_contracts import ChatMessageIn, SessionGrant, subjects

TOKEN_REMEDY = (
    "get a fresh token from your identity provider (embedded stack: "
    "`caduceus identity token --tenant <tenant> --user <user>`) and send the message again"
)
DIRECTORY_FORMAT = """\
tenants:
  acme:
    display_name: Acme Corp
    workspaces: [default]
    users:
      alice: {email: alice@acme.example, roles: [member]}"""

Name = Annotated[str, Field(pattern=subjects.TOKEN_RE.pattern)]
Role = Annotated[str, Field(min_length=1, max_length=128)]


class Refused(Exception):
    """A chat message identity will not admit: `reason` says why, `remedy` what the person can do."""

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


class DirectoryError(ValueError):
    """The tenants file is missing or wrong; the message names the file and what to fix."""


@dataclass(frozen=True)
class VerifiedIdentity:
    """The claims identity trusts after a token passed every check."""

    subject: str
    tenant: str
    roles: tuple[str, ...]
    email: str | None
    issuer: str
    expires_at: datetime


class _Entry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class User(_Entry):
    email: str = Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
    roles: tuple[Role, ...] = ()


class Tenant(_Entry):
    display_name: str = Field(min_length=1, max_length=256)
    workspaces: tuple[Name, ...] = Field(default=("default",), min_length=1)
    users: dict[Annotated[str, Field(min_length=1, max_length=256)], User] = {}


class Directory(_Entry):
    """Tenants, their workspaces and their users with roles: the contents of tenants.yaml."""

    tenants: dict[Name, Tenant]

    def tenant(self, name: str) -> Tenant:
        """The tenant, or Refused when the directory does not know it."""
        tenant = self.tenants.get(name)
        if tenant is None:
            raise Refused(
                f"unknown tenant {name!r}",
                "check the tenant name, or ask an administrator to add it to tenants.yaml",
            )
        return tenant

    def user(self, tenant_name: str, user_name: str) -> User:
        """A user of a tenant, or Refused when the tenant or the user is unknown."""
        user = self.tenant(tenant_name).users.get(user_name)
        if user is None:
            raise Refused(
                f"user {user_name!r} is not a member of tenant {tenant_name!r}",
                f"ask an administrator of {tenant_name!r} to add you to tenants.yaml",
            )
        return user

    def admit(self, identity: VerifiedIdentity, message: ChatMessageIn, *, now: datetime,
              ttl: timedelta) -> SessionGrant:
        """The session grant for one chat message from a verified person, or Refused saying why not.

        Roles come from the directory, not the token: the directory is what the operator controls.
        """
        if identity.tenant != message.tenant:
            raise Refused(
                f"token is for tenant {identity.tenant!r}, but the message was sent to tenant {message.tenant!r}",
                f"send it to tenant {identity.tenant!r}, or get a token for {message.tenant!r}",
            )
        tenant = self.tenant(message.tenant)
        user = self.user(message.tenant, identity.subject)
        if message.workspace not in tenant.workspaces:
            raise Refused(
                f"workspace {message.workspace!r} is not one of tenant {message.tenant!r}'s workspaces "
                f"({', '.join(tenant.workspaces)})",
                "choose one of those workspaces",
            )
        return SessionGrant(
            tenant=message.tenant,
            workspace=message.workspace,
            user=identity.subject,
            roles=user.roles,
            channel=message.channel,
            session_id=message.session_id,
            issued_at=now,
            expires_at=now + ttl,
        )


def parse_directory(text: str, source: str) -> Directory:
    """Parse tenants.yaml content; DirectoryError names `source` and what to fix."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise DirectoryError(f"{source} is not valid YAML{where}: {problem}; fix the syntax") from None
    if data is None:
        raise DirectoryError(f"{source} is empty: it needs a `tenants:` mapping, for example:\n{DIRECTORY_FORMAT}")
    if not isinstance(data, dict) or "tenants" not in data:
        raise DirectoryError(
            f"{source} must be a mapping with a `tenants:` key at the top, for example:\n{DIRECTORY_FORMAT}"
        )
    try:
        return Directory.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors()[:5]:
            where = ".".join(str(part) for part in error["loc"]) or "top level"
            problems.append(f"  {where}: {_explain(error)}")
        more = f"\n  ... and {exc.error_count() - 5} more" if exc.error_count() > 5 else ""
        raise DirectoryError(
            f"{source} has {exc.error_count()} problem(s):\n" + "\n".join(problems) + more
            + f"\nfix those entries; the expected shape is:\n{DIRECTORY_FORMAT}"
        ) from None


def _explain(error: dict) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key (check its spelling: tenants have display_name, workspaces, users; users have email, roles)"
    if kind == "string_pattern_mismatch":
        return (f"{error.get('input')!r} is not a valid name: use lowercase letters, digits, '-' or '_' "
                "(or, for email, an address like alice@acme.example)")
    if kind == "missing":
        return "required, but missing"
    return str(error["msg"])

