"""A policy pack as data: per tenant, rules, approval settings, classifiers, MCP annotations, limits, raw Cedar.

Plain frozen dataclasses, no I/O. The loader builds them from YAML (checking every field);
the compiler turns rules into Cedar.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal

from caduceus_policy.facts.content import Classifier

Effect = Literal["allow", "deny", "approve"]
LimitKind = Literal["calls", "tokens", "cost_usd"]
ApprovalMode = Literal["always-ask", "ask-when-risky", "never"]
Dimension = Literal["user", "tenant", "tool", "workspace"]


@dataclass(frozen=True)
class Source:
    """Where something was written: file and line (1-based), for error messages and explanations."""

    file: str
    line: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass(frozen=True)
class Approval:
    """Who approves, how many of them, and how long they have."""

    approvers: str
    quorum: int = 1
    timeout_s: float = 900.0
    # After `escalate_after_s` without a decision, members of `escalate_to` may answer too.
    escalate_to: tuple[str, ...] = ()
    escalate_after_s: float | None = None
    remind_every_s: float | None = None
    # Whether requesters may approve their own calls (separation of duties says no).
    self_approval: bool = False


def tool_matches(patterns: tuple[str, ...] | None, tool: str) -> bool:
    """None matches every tool; otherwise any `*` glob in `patterns`."""
    return patterns is None or any(fnmatchcase(tool, pattern) for pattern in patterns)


@dataclass(frozen=True)
class Rule:
    """One YAML rule: `effect` for `tools` (globs) and `roles`/`users` (None = anyone) when facts hold."""

    id: str
    effect: Effect
    tools: tuple[str, ...]
    source: Source
    roles: tuple[str, ...] | None = None
    users: tuple[str, ...] | None = None
    when: Mapping[str, Any] = field(default_factory=dict)
    unless: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""
    approval: Approval | None = None


@dataclass(frozen=True)
class Limit:
    """At most `maximum` calls (or tokens, or dollars) per `per` scope over a sliding `window_s`."""

    id: str
    kind: LimitKind
    maximum: float
    window_s: float
    per: tuple[Dimension, ...]
    source: Source
    tools: tuple[str, ...] | None = None
    roles: tuple[str, ...] | None = None

    def applies(self, tool: str, roles: tuple[str, ...]) -> bool:
        if self.roles is not None and not set(self.roles) & set(roles):
            return False
        return self.kind != "calls" or tool_matches(self.tools, tool)

    def scope(self, *, tenant: str, user: str, tool: str, workspace: str) -> tuple[str, ...]:
        values = {"tenant": tenant, "user": user, "tool": tool, "workspace": workspace}
        return (tenant, *(f"{dimension}={values[dimension]}" for dimension in self.per))

    def describe(self) -> str:
        unit = {"calls": "calls", "tokens": "tokens", "cost_usd": "USD"}[self.kind]
        amount = f"{self.maximum:g}"
        return f"{amount} {unit} per {'+'.join(self.per)} per {format_duration(self.window_s)}"


@dataclass(frozen=True)
class McpAnnotations:
    read_only: bool = False
    destructive: bool = True  # MCP's default when a tool does not say


@dataclass(frozen=True)
class RawCedar:
    """Cedar policies written by hand, beside the YAML."""

    text: str
    source: Source


DataAction = Literal["deny", "redact"]
# The built-in data class: credentials found by their shapes (facts/content.py); tenants' classifiers add others.
SECRET_CLASS = "secret"


@dataclass(frozen=True)
class ModelRoute:
    """Model calls matching every given condition go to `upstream` (a name the inference gateway knows)."""

    id: str
    upstream: str
    source: Source
    roles: tuple[str, ...] | None = None
    workspaces: tuple[str, ...] | None = None
    data_classes: tuple[str, ...] | None = None  # any of them present in the prompt

    def matches(self, roles: tuple[str, ...], workspace: str, present: set[str]) -> bool:
        if self.roles is not None and not set(self.roles) & set(roles):
            return False
        if self.workspaces is not None and workspace not in self.workspaces:
            return False
        return self.data_classes is None or bool(set(self.data_classes) & present)


@dataclass(frozen=True)
class ModelPolicy:
    """A tenant's `models:` section: routes (first match wins), the default upstream, and data rules."""

    default: str | None = None
    routes: tuple[ModelRoute, ...] = ()
    prompt_rules: Mapping[str, DataAction] = field(default_factory=dict)
    response_rules: Mapping[str, DataAction] = field(default_factory=dict)
    source: Source | None = None


# A tenant without a `models:` section: the gateway's `default` upstream, credentials redacted from prompts.
DEFAULT_MODEL_POLICY = ModelPolicy(default="default", prompt_rules={SECRET_CLASS: "redact"})


GuardrailLimit = Literal["model_calls", "tool_calls", "tokens", "wall_time_s", "same_call", "same_failing_call"]
GUARDRAIL_LIMITS: tuple[GuardrailLimit, ...] = ("model_calls", "tool_calls", "tokens", "wall_time_s", "same_call",
                                                "same_failing_call")


@dataclass(frozen=True)
class Guardrail:
    """One entry of a tenant's `guardrails:` list: per-turn limits for everyone (no `roles`/`workspaces`), or for
    the people with one of `roles` and/or the turns in one of `workspaces`. `None` leaves a limit to a less
    specific entry."""

    id: str
    source: Source
    roles: tuple[str, ...] | None = None
    workspaces: tuple[str, ...] | None = None
    model_calls: int | None = None
    tool_calls: int | None = None
    tokens: int | None = None
    wall_time_s: float | None = None
    same_call: int | None = None  # the same call (same digest) at most this many times in a turn
    same_failing_call: int | None = None  # a call that failed this many times is not tried again in the turn

    def matches(self, roles: tuple[str, ...], workspace: str) -> bool:
        if self.roles is not None and not set(self.roles) & set(roles):
            return False
        return self.workspaces is None or workspace in self.workspaces

    @property
    def specificity(self) -> int:
        return (2 if self.workspaces is not None else 0) + (1 if self.roles is not None else 0)

    def scope(self, tenant: str) -> str:
        """Whom the entry is for, in words: `acme`, `role admin in acme`, `workspace research of acme`."""
        parts = []
        if self.roles is not None:
            parts.append(f"role{'s' if len(self.roles) > 1 else ''} {', '.join(self.roles)}")
        if self.workspaces is not None:
            parts.append(f"workspace{'s' if len(self.workspaces) > 1 else ''} {', '.join(self.workspaces)}")
        return f"{' in '.join(parts)} in {tenant}" if parts else tenant


@dataclass(frozen=True)
class TurnLimits:
    """The per-turn limits that hold for one turn, each with the guardrail entry that set it."""

    values: Mapping[str, tuple[float, Guardrail]] = field(default_factory=dict)

    def get(self, limit: str) -> tuple[float, Guardrail] | None:
        return self.values.get(limit)

    def __bool__(self) -> bool:
        return bool(self.values)

    def as_json(self) -> dict[str, dict[str, Any]]:
        return {name: {"limit": value, "guardrail": entry.id} for name, (value, entry) in self.values.items()}

    def describe(self) -> str:
        """`tool_calls 50 (acme-turns), wall_time 30m (acme-turns), ...`, or `none`."""
        return ", ".join(f"{name.removesuffix('_s')} {format_duration(value) if name == 'wall_time_s' else f'{value:g}'}"
                         f" ({entry.id})" for name, (value, entry) in self.values.items()) or "none"


def turn_limits(guardrails: tuple[Guardrail, ...], roles: tuple[str, ...], workspace: str) -> TurnLimits:
    """Each limit from the most specific matching entry that sets it (workspace and role, then workspace, then
    role, then the tenant's own); among equally specific entries, the first in the pack."""
    matching = sorted((g for g in guardrails if g.matches(roles, workspace)), key=lambda g: -g.specificity)
    values: dict[str, tuple[float, Guardrail]] = {}
    for entry in matching:
        for name in GUARDRAIL_LIMITS:
            value = getattr(entry, name)
            if value is not None and name not in values:
                values[name] = (float(value), entry)
    return TurnLimits(values)


@dataclass(frozen=True)
class TenantPolicy:
    name: str
    rules: tuple[Rule, ...] = ()
    approval: Approval | None = None
    approval_modes: Mapping[str, ApprovalMode] = field(default_factory=dict)
    classifiers: tuple[Classifier, ...] = ()
    mcp: Mapping[str, Mapping[str, McpAnnotations]] = field(default_factory=dict)
    limits: tuple[Limit, ...] = ()
    cedar: tuple[RawCedar, ...] = ()
    models: ModelPolicy = DEFAULT_MODEL_POLICY
    guardrails: tuple[Guardrail, ...] = ()

    def mcp_annotations(self, server: str, tool: str) -> McpAnnotations:
        tools = self.mcp.get(server, {})
        return tools.get(tool) or tools.get("*") or McpAnnotations()


@dataclass(frozen=True)
class TestCase:
    """A policy test: one call, and the decision the pack must make for it."""

    name: str
    tenant: str
    tool: str
    args: Mapping[str, Any]
    expect: Effect
    source: Source
    user: str = "test-user"
    roles: tuple[str, ...] = ()
    workspace: str = "default"
    expect_ids: tuple[str, ...] | None = None
    # A model-call case: the prompt (then `tool` is "model") and the upstream the pack must route it to.
    prompt: str | None = None
    expect_upstream: str | None = None
    # What the call's turn did before it (tool_calls, model_calls, tokens, ran_s, same_call, same_failed), so the
    # case tests the pack's turn guardrails; None: a fresh turn, guardrails not consulted.
    turn: Mapping[str, float] | None = None


@dataclass(frozen=True)
class Pack:
    """A whole pack: its version, each tenant's policy, and the test cases it carries."""

    version: str
    tenants: Mapping[str, TenantPolicy]
    tests: tuple[TestCase, ...] = ()
    files: Mapping[str, str] = field(default_factory=dict)  # name -> text, as published to the bus


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
