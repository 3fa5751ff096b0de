"""Who may speak to Caduceus, and on what terms: the tenant directory and admission of a chat message.

Pure logic, no I/O: a verified identity (from an OIDC token, or a chat-platform user a
service account vouches for) plus the message it came with either becomes a `SessionGrant`
or a `Refused` saying what was wrong and what the person can do about it.

The directory is tenants.yaml. Per tenant: workspaces; users with roles and an approval mode;
OIDC groups mapped to roles; custom roles on top of the tiers owner > admin > member > guest
(a tier includes the ones below it); the OIDC issuers the tenant trusts; and the memory scope
(one memory for the tenant, one per user, or one per channel).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from caduceus_contracts import MCP_ENDPOINT_CHANNEL, ChatMessageIn, SessionGrant, subjects
from caduceus_oidc import Refused, VerifiedIdentity

DIRECTORY_FORMAT = """\
tenants:
  acme:
    display_name: Acme Corp
    workspaces: [default]
    memory: user                 # tenant | user | channel
    groups: {acme-admins: [admin]}
    users:
      alice: {email: alice@acme.example, roles: [member]}"""

# Highest first; each tier includes every tier below it.
TIERS = ("owner", "admin", "member", "guest")
ADMIN_ROLES = frozenset({"owner", "admin"})

Name = Annotated[str, Field(pattern=subjects.TOKEN_RE.pattern)]
RoleName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]
UserName = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\s:]+$")]
ApprovalMode = Literal["always-ask", "ask-when-risky", "never"]
MemoryScope = Literal["tenant", "user", "channel"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a tenants file: where it is (the entry's dotted path, and its line when known), what to fix."""

    where: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        return f"line {self.line}: {self.where}: {self.message}" if self.line else f"{self.where}: {self.message}"


class DirectoryError(ValueError):
    """The tenants file is missing or wrong; the message names the file and what to fix, `problems` each problem."""

    def __init__(self, message: str, problems: tuple[Problem, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems


class DirectoryUnreadable(DirectoryError):
    """The tenants file could not be read at all (missing, no permission), as opposed to read and found wrong."""


class _Entry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class User(_Entry):
    email: str = Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
    roles: tuple[RoleName, ...] = ()
    # Unset: the tenant's approval mode.
    approval_mode: ApprovalMode | None = None


class CustomRole(_Entry):
    description: str = ""
    # Roles (tiers or other custom roles) a holder of this role also has.
    includes: tuple[RoleName, ...] = ()


class Issuer(_Entry):
    """An OIDC provider whose tokens name people of this tenant."""

    url: str = Field(pattern=r"^https?://[^\s]+$")
    audience: str = Field(default="caduceus", min_length=1)
    # The claim that names the person (matched against user names, then emails).
    username_claim: str = "sub"
    groups_claim: str = "groups"


class Tenant(_Entry):
    display_name: str = Field(min_length=1, max_length=256)
    workspaces: tuple[Name, ...] = Field(default=("default",), min_length=1)
    users: dict[UserName, User] = {}
    roles: dict[RoleName, CustomRole] = {}
    groups: dict[Annotated[str, Field(min_length=1, max_length=256)], tuple[RoleName, ...]] = {}
    issuers: tuple[Issuer, ...] = ()
    # Unset: the policy pack decides.
    approval_mode: ApprovalMode | None = None
    memory: MemoryScope = "user"

    @model_validator(mode="after")
    def _known_roles(self) -> "Tenant":
        problems = role_problems(self.model_dump(include={"roles", "users", "groups"}))
        if problems:
            raise ValueError("; ".join(message for _, message in problems))
        return self

    def effective_roles(self, roles: tuple[str, ...] | set[str]) -> tuple[str, ...]:
        """Roles with everything they include: tiers below a tier, and what custom roles include."""
        found: set[str] = set()
        pending = list(roles)
        while pending:
            role = pending.pop()
            if role in found:
                continue
            found.add(role)
            if role in TIERS:
                pending.extend(TIERS[TIERS.index(role) + 1:])
            elif role in self.roles:
                pending.extend(self.roles[role].includes)
        return tuple(t for t in TIERS if t in found) + tuple(sorted(found - set(TIERS)))

    def find_user(self, name: str, *, email_verified: bool = True) -> tuple[str, User] | None:
        """A user by name, or by email when `name` is an address the provider verified."""
        user = self.users.get(name)
        if user is not None:
            return name, user
        if "@" in name and email_verified:
            lowered = name.lower()
            for user_name, candidate in self.users.items():
                if candidate.email.lower() == lowered:
                    return user_name, candidate
        return None

    def user_by_email(self, email: str) -> str | None:
        found = self.find_user(email)
        return found[0] if found else None


def role_problems(tenant: Mapping[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    """Every role a tenant's entries name that is neither a tier nor one of its custom roles, each with where it is
    (relative to the tenant). It reads plain data, so it also checks a tenant whose other entries are malformed."""
    custom = _mapping(tenant.get("roles"))
    known = set(TIERS) | set(custom)
    found = [(("roles", name), f"custom role {name!r} has the name of a tier; tiers are {', '.join(TIERS)}")
             for name in custom if name in TIERS]
    for name, role in custom.items():
        found += _unknown(_mapping(role).get("includes"), known, ("roles", name, "includes"), f"role {name!r} includes")
    for name, user in _mapping(tenant.get("users")).items():
        found += _unknown(_mapping(user).get("roles"), known, ("users", name, "roles"), f"user {name!r} has")
    for group, roles in _mapping(tenant.get("groups")).items():
        found += _unknown(roles, known, ("groups", group), f"group {group!r} maps to")
    return found


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _unknown(roles: Any, known: set[str], where: tuple[str, ...], who: str) -> list[tuple[tuple[str, ...], str]]:
    if not isinstance(roles, list | tuple):
        return []
    unknown = sorted({role for role in roles if isinstance(role, str)} - known)
    return [(where, f"{who} unknown role(s) {unknown}: use a tier ({', '.join(TIERS)}) or declare it under the "
                    "tenant's `roles:`")] if unknown else []


@dataclass(frozen=True)
class Member:
    """What the directory says about a person in a tenant: their name, effective roles and approval mode."""

    tenant: str
    name: str
    roles: tuple[str, ...]
    approval_mode: ApprovalMode | None
    listed: bool

    @property
    def is_admin(self) -> bool:
        return bool(ADMIN_ROLES & set(self.roles))


class Directory(_Entry):
    """Tenants, their workspaces and their people: the contents of tenants.yaml."""

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
        """A listed user of a tenant, or Refused when the tenant or the user is unknown."""
        found = self.tenant(tenant_name).find_user(user_name, email_verified=False)
        if found is None:
            raise _not_a_member(tenant_name, user_name)
        return found[1]

    def member(self, identity: VerifiedIdentity) -> Member:
        """The person an identity names, with roles from the directory (their entry, and their groups).

        Roles never come from the token itself: only the groups the provider asserts, mapped by this
        tenant's `groups:`. A person not listed under `users:` is admitted when a group maps to a role.
        """
        tenant = self.tenant(identity.tenant)
        found = tenant.find_user(identity.subject, email_verified=identity.email_verified)
        if found is None and identity.email and identity.email_verified:
            found = tenant.find_user(identity.email)
        granted = {role for group in identity.groups for role in tenant.groups.get(group, ())}
        if found is None:
            if not granted:
                raise _not_a_member(identity.tenant, identity.subject)
            return Member(identity.tenant, identity.subject, tenant.effective_roles(granted), tenant.approval_mode,
                          listed=False)
        name, user = found
        return Member(identity.tenant, name, tenant.effective_roles({*user.roles, *granted}),
                      user.approval_mode or tenant.approval_mode, listed=True)

    def admit(self, identity: VerifiedIdentity, message: ChatMessageIn, *, now: datetime,
              ttl: timedelta) -> SessionGrant:
        """The session grant for one chat message from a verified person, or Refused saying why not."""
        if message.channel == MCP_ENDPOINT_CHANNEL:
            raise Refused(f"channel {MCP_ENDPOINT_CHANNEL!r} is reserved for the MCP endpoint's grants, not chat",
                          "send the message on another channel name, e.g. cli or web:<user>")
        return self.grant(identity, message.tenant, message.workspace, message.channel, message.session_id,
                          now=now, ttl=ttl, sent_to="the message was sent to")

    def grant(self, identity: VerifiedIdentity, tenant_name: str, workspace: str, channel: str, session_id: str, *,
              now: datetime, ttl: timedelta, sent_to: str = "it was used for") -> SessionGrant:
        """The session grant of a verified person in a tenant's workspace, or Refused saying why not."""
        if identity.tenant != tenant_name:
            raise Refused(
                f"token is for tenant {identity.tenant!r}, but {sent_to} tenant {tenant_name!r}",
                f"send it to tenant {identity.tenant!r}, or get a token for {tenant_name!r}",
            )
        tenant = self.tenant(tenant_name)
        member = self.member(identity)
        if workspace not in tenant.workspaces:
            raise Refused(
                f"workspace {workspace!r} is not one of tenant {tenant_name!r}'s workspaces "
                f"({', '.join(tenant.workspaces)})",
                "choose one of those workspaces",
            )
        return SessionGrant(
            tenant=tenant_name,
            workspace=workspace,
            user=member.name,
            roles=member.roles,
            channel=channel,
            session_id=session_id,
            issued_at=now,
            expires_at=now + ttl,
            approval_mode=member.approval_mode,
            memory_scope=memory_scope(tenant.memory, member.name, channel),
        )


# A channel several people share is named `channel:<platform>:...` by the integration that carries it (e.g.
# `channel:slack:T024BE7LD:C0123`); a person's own channels (the CLI, `web:<user>`, a DM) are named otherwise.
SHARED_CHANNEL_PREFIX = "channel:"


def memory_scope(kind: MemoryScope, user: str, channel: str) -> str:
    """The grant's memory scope: the whole tenant, this user, or this channel.

    With per-user memory, what a person says in a shared channel is kept apart from their own memory
    (`user:<name>@<channel>`), so a channel's context never reaches their DMs, the web chat or the CLI.
    """
    if kind == "tenant":
        return "tenant"
    if kind == "channel":
        return f"channel:{channel}"
    return f"user:{user}@{channel}" if channel.startswith(SHARED_CHANNEL_PREFIX) else f"user:{user}"


def _not_a_member(tenant: str, user: str) -> Refused:
    return Refused(f"user {user!r} is not a member of tenant {tenant!r}",
                   f"ask an administrator of {tenant!r} to add you to tenants.yaml (or to a group it maps to roles)")


def parse_directory(text: str, source: str) -> Directory:
    """Parse tenants.yaml content; DirectoryError names `source` and what to fix."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise DirectoryError(f"{source} is not valid YAML{where}: {problem}; fix the syntax",
                             (Problem("yaml", f"{problem}; fix the syntax", mark.line + 1 if mark else None),)) from None
    if data is None:
        raise DirectoryError(f"{source} is empty: it needs a `tenants:` mapping, for example:\n{DIRECTORY_FORMAT}")
    if not isinstance(data, dict) or "tenants" not in data:
        raise DirectoryError(
            f"{source} must be a mapping with a `tenants:` key at the top, for example:\n{DIRECTORY_FORMAT}"
        )
    try:
        return Directory.model_validate(data)
    except ValidationError as exc:
        problems = _problems(exc, data, text)
        raise DirectoryError(
            f"{source} has {len(problems)} problem(s):\n" + "\n".join(f"  {problem}" for problem in problems)
            + f"\nfix those entries; the expected shape is:\n{DIRECTORY_FORMAT}", problems
        ) from None


def _problems(exc: ValidationError, data: dict, text: str) -> tuple[Problem, ...]:
    """Every problem of the file at once, in file order: the model's findings, and the role check of every
    tenant, which the model skips for a tenant with any other problem (so fixing one would reveal the next)."""
    line_of = _line_finder(text)
    tenants = _mapping(data.get("tenants"))
    roles = {name: role_problems(_mapping(tenant)) for name, tenant in tenants.items()}
    found = []
    for error in exc.errors():
        loc = error["loc"]
        if error["type"] == "value_error" and len(loc) == 2 and loc[0] == "tenants" and roles.get(loc[1]):
            continue  # the tenant's role check: reported entry by entry below
        found.append(Problem(".".join(str(part) for part in loc) or "top level", _explain(error), line_of(loc)))
    for name, problems in roles.items():
        for where, message in problems:
            loc = ("tenants", name, *where)
            found.append(Problem(".".join(str(part) for part in loc), message, line_of(loc)))
    return tuple(sorted(found, key=lambda problem: problem.line or 0))


def _line_finder(text: str) -> Callable[[tuple], int | None]:
    """The line (1-based) where the entry at a validation path starts in the YAML text, or the nearest one above."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        root = None

    def line_of(loc: tuple) -> int | None:
        node, line = root, None
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                entry = next(((key, value) for key, value in node.value if key.value == str(part)), None)
                if entry is None:
                    break
                line, node = entry[0].start_mark.line + 1, entry[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        return line

    return line_of


def _explain(error: dict) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return ("unknown key (check its spelling: tenants have display_name, workspaces, users, roles, groups, "
                "issuers, approval_mode, memory; users have email, roles, approval_mode)")
    if kind == "string_pattern_mismatch":
        return (f"{error.get('input')!r} is not a valid name: use lowercase letters, digits, '-' or '_' "
                "(or, for email, an address like alice@acme.example)")
    if kind == "missing":
        return "required, but missing"
    if kind == "literal_error":
        return f"{error.get('input')!r} is not allowed: {error['msg'].removeprefix('Input should be ')}"
    return str(error["msg"]).removeprefix("Value error, ")
