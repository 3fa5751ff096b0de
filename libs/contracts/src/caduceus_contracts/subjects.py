"""Subject builders: `cad.v1.<domain>.<event>.<tenant>[.<more>]`.

The tenant is always the fifth token so NATS permissions and stream filters
can scope by it. Tokens are validated: a tenant or workspace that could smuggle
a wildcard or a dot into a subject is refused.
"""

from __future__ import annotations

import re

PREFIX = "cad.v1"
ALL = f"{PREFIX}.>"
TOKEN_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
SESSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
SYSTEM_TENANT = "_system"  # what cannot be attributed to a valid tenant: its errors, its audit chain
# Whom an error report or an audit chain can belong to: a tenant, or the system (the one definition of both).
CHAIN_RE = re.compile(rf"^(?:{SYSTEM_TENANT}|{TOKEN_RE.pattern[1:-1]})$")


class SubjectError(ValueError):
    """A subject token is not a valid tenant, workspace or session name."""


def token(value: str, what: str = "tenant") -> str:
    if not TOKEN_RE.fullmatch(value or ""):
        raise SubjectError(
            f"invalid {what} {value!r}: use 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit"
        )
    return value


def is_chain(value: str | None) -> bool:
    """True for a tenant name or the system chain's name: what audit chains and error reports are kept under."""
    return bool(CHAIN_RE.fullmatch(value or ""))


def chain_token(value: str) -> str:
    if not is_chain(value):
        raise SubjectError(f"invalid tenant {value!r}: use 1-63 lowercase letters, digits, '-' or '_', starting with "
                           f"a letter or digit (or {SYSTEM_TENANT}, the system chain)")
    return value


def session_token(value: str) -> str:
    if not SESSION_RE.fullmatch(value or ""):
        raise SubjectError(f"invalid session id {value!r}: use letters, digits, '-' or '_' (at most 128)")
    return value


def chat_in(tenant: str) -> str:
    return f"{PREFIX}.chat.in.{token(tenant)}"


def chat_reply(tenant: str, session: str) -> str:
    return f"{PREFIX}.chat.reply.{token(tenant)}.{session_token(session)}"


def turn_requested(tenant: str) -> str:
    return f"{PREFIX}.turn.requested.{token(tenant)}"


def turn_assigned(tenant: str, workspace: str) -> str:
    return f"{PREFIX}.turn.assigned.{token(tenant)}.{token(workspace, 'workspace')}"


def tool_requested(tenant: str) -> str:
    return f"{PREFIX}.tool.requested.{token(tenant)}"


def tool_decided(tenant: str) -> str:
    return f"{PREFIX}.tool.decided.{token(tenant)}"


def tool_dispatched(tenant: str, workspace: str) -> str:
    return f"{PREFIX}.tool.dispatched.{token(tenant)}.{token(workspace, 'workspace')}"


def tool_completed(tenant: str, workspace: str) -> str:
    return f"{PREFIX}.tool.completed.{token(tenant)}.{token(workspace, 'workspace')}"


def worker_event(tenant: str, workspace: str) -> str:
    return f"{PREFIX}.worker.lifecycle.{token(tenant)}.{token(workspace, 'workspace')}"


def model_usage(tenant: str) -> str:
    return f"{PREFIX}.model.usage.{token(tenant)}"


def model_requested(tenant: str) -> str:
    return f"{PREFIX}.model.requested.{token(tenant)}"


def model_decided(tenant: str) -> str:
    return f"{PREFIX}.model.decided.{token(tenant)}"


def model_completed(tenant: str) -> str:
    return f"{PREFIX}.model.completed.{token(tenant)}"


def policy_shadow(tenant: str) -> str:
    return f"{PREFIX}.policy.shadow.{token(tenant)}"


def approval(event: str, tenant: str) -> str:
    """`cad.v1.approval.<event>.<tenant>`: requested, voted, escalated, reminded, resolved, answered, refused."""
    return f"{PREFIX}.approval.{token(event, 'approval event')}.{token(tenant)}"


def chat_notice(tenant: str, session: str) -> str:
    return f"{PREFIX}.chat.notice.{token(tenant)}.{session_token(session)}"


def identity_changed(tenant: str) -> str:
    return f"{PREFIX}.identity.changed.{token(tenant)}"


def audit_checkpoint(chain: str) -> str:
    return f"{PREFIX}.audit.checkpoint.{chain_token(chain)}"


def error(tenant: str, service: str) -> str:
    tenant_token = tenant if is_chain(tenant) else SYSTEM_TENANT
    return f"{PREFIX}.error.{tenant_token}.{token(service, 'service')}"


def identity_grant(tenant: str) -> str:
    """Request subject (core NATS, never stored: it carries a token): a verified OIDC token in, a session grant out."""
    return f"caduceus.identity.grant.{token(tenant)}"


def mcp_event(event: str, tenant: str) -> str:
    """`cad.v1.mcp.<event>.<tenant>`: server, pin, definition (the MCP gateway's audited changes)."""
    return f"{PREFIX}.mcp.{token(event, 'mcp event')}.{token(tenant)}"


def mcp_dispatched(tenant: str, workspace: str) -> str:
    """Where the broker sends a decided `mcp__<server>__<tool>` call: to the MCP gateway, never an executor."""
    return f"{PREFIX}.mcp.dispatched.{token(tenant)}.{token(workspace, 'workspace')}"


def mcp_tools(tenant: str, workspace: str) -> str:
    """Request subject (core NATS, not stored): which MCP tools a planner of tenant/workspace may see."""
    return f"caduceus.mcp.tools.{token(tenant)}.{token(workspace, 'workspace')}"


def mcp_facts(tenant: str) -> str:
    """Request subject (core NATS, not stored): policy asks the gateway for one MCP tool's facts."""
    return f"caduceus.mcp.facts.{token(tenant)}"


def policy_reachable(tenant: str) -> str:
    """Request subject (core NATS, not stored): which tools the live policy could ever allow for a person."""
    return f"caduceus.policy.reachable.{token(tenant)}"


def audit_usage(tenant: str) -> str:
    """Request subject (core NATS, not stored): the approval UI asks audit for one tenant's model usage."""
    return f"caduceus.audit.usage.{token(tenant)}"


def _tenant_index(parts: list[str]) -> int:
    # Error subjects have no event token: cad.v1.error.<tenant>.<service>.
    return 3 if parts[2] == "error" else 4


def tenant_of(subject: str) -> str | None:
    """The tenant token of a `cad.v1` subject (or of a request subject `caduceus.<domain>.<verb>.<tenant>`),
    or None when it has none or it is invalid."""
    parts = subject.split(".")
    if parts[0] == "caduceus" and len(parts) >= 4 and parts[1] != "health":
        return parts[3] if TOKEN_RE.match(parts[3]) else None
    if len(parts) < 5 or parts[0] != "cad" or parts[1] != "v1":
        return None
    tenant = parts[_tenant_index(parts)]
    return tenant if is_chain(tenant) else None


def any_tenant(builder_subject: str) -> str:
    """Turn a concrete subject pattern into a per-tenant wildcard (`...<tenant>` -> `...*`)."""
    parts = builder_subject.split(".")
    parts[_tenant_index(parts)] = "*"
    return ".".join(parts)


# Wildcards services subscribe to.
CHAT_IN_ALL = f"{PREFIX}.chat.in.*"
TURN_REQUESTED_ALL = f"{PREFIX}.turn.requested.*"
TOOL_REQUESTED_ALL = f"{PREFIX}.tool.requested.*"
TOOL_DECIDED_ALL = f"{PREFIX}.tool.decided.*"
TOOL_COMPLETED_ALL = f"{PREFIX}.tool.completed.*.*"
APPROVAL_ALL = f"{PREFIX}.approval.*.*"
APPROVAL_ANSWERED_ALL = f"{PREFIX}.approval.answered.*"
CHAT_REPLY_ALL = f"{PREFIX}.chat.reply.*.*"
MODEL_USAGE_ALL = f"{PREFIX}.model.usage.*"
AUDIT_CHECKPOINT_ALL = f"{PREFIX}.audit.checkpoint.*"
TURN_ASSIGNED_ALL = f"{PREFIX}.turn.assigned.*.*"
TOOL_DISPATCHED_ALL = f"{PREFIX}.tool.dispatched.*.*"
WORKER_LIFECYCLE_ALL = f"{PREFIX}.worker.lifecycle.*.*"
IDENTITY_CHANGED_ALL = f"{PREFIX}.identity.changed.*"
CHAT_NOTICE_ALL = f"{PREFIX}.chat.notice.*.*"
POLICY_EVENTS = f"{PREFIX}.policy.>"
APPROVAL_EVENTS = f"{PREFIX}.approval.>"
# A chat integration's request that identity vouch for a platform user's answer, and identity's signed vouch.
APPROVAL_VOUCH_ALL = f"{PREFIX}.approval.vouch.*"
APPROVAL_VOUCHED_ALL = f"{PREFIX}.approval.vouched.*"
APPROVAL_REFUSED_ALL = f"{PREFIX}.approval.refused.*"
AUDIT_EVENTS = f"{PREFIX}.audit.>"
IDENTITY_GRANT_ALL = "caduceus.identity.grant.*"
MCP_EVENTS = f"{PREFIX}.mcp.>"
MCP_DISPATCHED_ALL = f"{PREFIX}.mcp.dispatched.*.*"
MCP_TOOLS_ALL = "caduceus.mcp.tools.*.*"
MCP_FACTS_ALL = "caduceus.mcp.facts.*"
POLICY_REACHABLE_ALL = "caduceus.policy.reachable.*"
MODEL_REQUESTED_ALL = f"{PREFIX}.model.requested.*"
MODEL_DECIDED_ALL = f"{PREFIX}.model.decided.*"
MODEL_COMPLETED_ALL = f"{PREFIX}.model.completed.*"
AUDIT_USAGE_ALL = "caduceus.audit.usage.*"
