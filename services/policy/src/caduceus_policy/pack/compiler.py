"""Compiling a pack to Cedar: each YAML rule becomes one Cedar policy; raw Cedar is checked and kept.

Every call is the request `Caduceus::User::"<user>"` does `Caduceus::Action::"call_tool"` on
`Caduceus::Tool::"<tool>"`, with the call's facts in the context (see `context_schema`).
`allow` rules become `permit`, `deny` rules `forbid`; `approve` rules become `forbid`
policies annotated `@approvers(...)`: they hold back a call that would otherwise be
permitted until people approve it. Raw Cedar may use the same annotations.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cedarpy

from caduceus_policy.facts import KNOWN_FACTS
from caduceus_policy.pack.loader import PackError
from caduceus_policy.pack.model import Approval, RawCedar, Rule, Source, TenantPolicy

NAMESPACE = "Caduceus"
ACTION = {"type": f"{NAMESPACE}::Action", "id": "call_tool"}
# Context attributes every call has besides its facts.
BASE_ATTRIBUTES: dict[str, str] = {"tenant": "String", "workspace": "String", "user": "String", "tool": "String",
                                   "roles": "Set<String>"}
CONTEXT_TYPES: dict[str, str] = {**BASE_ATTRIBUTES, **KNOWN_FACTS}
_CEDAR_TYPES = {"String": {"type": "String"}, "Bool": {"type": "Boolean"}, "Long": {"type": "Long"},
                "Set<String>": {"type": "Set", "element": {"type": "String"}}}


def context_schema() -> dict[str, Any]:
    """The Cedar schema (JSON form) every pack is validated against."""
    attributes = {name: _CEDAR_TYPES[kind] for name, kind in CONTEXT_TYPES.items()}
    return {NAMESPACE: {
        "entityTypes": {"User": {}, "Tool": {}},
        "actions": {"call_tool": {"appliesTo": {"principalTypes": ["User"], "resourceTypes": ["Tool"],
                                                "context": {"type": "Record", "attributes": attributes}}}},
    }}


SCHEMA = cedarpy.Schema.from_json_str(json.dumps(context_schema()))


@dataclass(frozen=True)
class CompiledPolicy:
    """One Cedar policy of a tenant, with what the engine needs to explain and route its match."""

    id: str
    effect: str  # allow | deny | approve
    cedar: str
    est: Mapping[str, Any]
    source: str
    tools: tuple[str, ...] | None  # None: raw Cedar, which may speak about any tool
    attributes: frozenset[str]  # context attributes it reads (see context_attributes)
    reason: str = ""
    approval: Approval | None = None
    when: Mapping[str, Any] = field(default_factory=dict)


def cedar_string(text: str) -> str:
    """A Cedar string literal."""
    out = ['"']
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif char == "\r":
            out.append("\\r")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{{{ord(char):x}}}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def cedar_like(pattern: str) -> str:
    """A Cedar `like` pattern: `*` is the wildcard, everything else literal."""
    return cedar_string(pattern).replace("\\*", "*")  # cedar_string leaves * alone; kept explicit for clarity


def _set(values: list[str] | tuple[str, ...]) -> str:
    return "[" + ", ".join(cedar_string(v) for v in values) + "]"


def condition(fact: str, expected: Any) -> str:
    """One `when` entry as a Cedar expression over `context.<fact>`."""
    kind = CONTEXT_TYPES[fact]
    attribute = f"context.{fact}"
    if kind == "Bool":
        return attribute if expected else f"!{attribute}"
    if isinstance(expected, Mapping):
        operator, operand = next(iter(expected.items()))
        if operator == "empty":
            return f"{attribute}.isEmpty()" if operand else f"!{attribute}.isEmpty()"
        if operator == "like":
            return f"{attribute} like {cedar_like(operand)}"
        if kind == "String":
            test = f"{_set(operand)}.contains({attribute})"
            return test if operator == "any_of" else f"!{test}"
        return {
            "any_of": f"{attribute}.containsAny({_set(operand)})",
            "none_of": f"!{attribute}.containsAny({_set(operand)})",
            "all_in": f"{_set(operand)}.containsAll({attribute})",
            "not_all_in": f"!{_set(operand)}.containsAll({attribute})",
        }[operator]
    values = [expected] if isinstance(expected, str) else list(expected)
    if kind == "String":
        return f"{attribute} == {cedar_string(values[0])}" if len(values) == 1 else \
            f"{_set(values)}.contains({attribute})"
    return f"{attribute}.contains({cedar_string(values[0])})" if len(values) == 1 else \
        f"{attribute}.containsAny({_set(values)})"


def tools_condition(tools: tuple[str, ...]) -> str | None:
    if "*" in tools:
        return None
    parts = [f"context.tool like {cedar_like(t)}" if "*" in t else f"context.tool == {cedar_string(t)}"
             for t in tools]
    return parts[0] if len(parts) == 1 else "(" + " || ".join(parts) + ")"


def rule_cedar(rule: Rule) -> str:
    """The Cedar text of one YAML rule."""
    annotations = [f"@id({cedar_string(rule.id)})"]
    if rule.reason:
        annotations.append(f"@reason({cedar_string(rule.reason)})")
    if rule.approval is not None:
        annotations += [f"@approvers({cedar_string(rule.approval.approvers)})",
                        f"@quorum(\"{rule.approval.quorum}\")", f"@timeout(\"{rule.approval.timeout_s:g}\")"]
    effect = "permit" if rule.effect == "allow" else "forbid"
    clauses = [c for c in (tools_condition(rule.tools),) if c]
    if rule.roles is not None:
        clauses.append(f"context.roles.containsAny({_set(rule.roles)})")
    if rule.users is not None:
        clauses.append(f"{_set(rule.users)}.contains(context.user)")
    clauses += [condition(fact, expected) for fact, expected in rule.when.items()]
    body = f"{effect} (principal, action == {NAMESPACE}::Action::\"call_tool\", resource)"
    if clauses:
        body += "\nwhen {\n  " + " &&\n  ".join(clauses) + "\n}"
    if rule.unless:
        body += "\nunless {\n  " + " &&\n  ".join(condition(f, e) for f, e in rule.unless.items()) + "\n}"
    return "\n".join(annotations) + "\n" + body + ";"


def _parse_one(text: str, where: str, policy_id: str) -> Mapping[str, Any]:
    try:
        est = json.loads(cedarpy.policies_to_json_str(text))
    except ValueError as exc:
        raise PackError(f"{where}: Cedar does not parse: {exc}") from None
    policies = list(est.get("staticPolicies", {}).values())
    if est.get("templates") or len(policies) != 1:
        raise PackError(f"{where}: expected exactly one static Cedar policy (templates are not supported)")
    result = cedarpy.validate_policies(text, SCHEMA)
    if not result.validation_passed:
        problems = "; ".join(e.error for e in result.errors[:3])
        raise PackError(f"{where}: Cedar policy {policy_id!r} does not fit the call context: {problems} "
                        f"(context attributes: {', '.join(sorted(CONTEXT_TYPES))})")
    return policies[0]


def context_attributes(est: Mapping[str, Any]) -> frozenset[str]:
    """The context attributes a policy reads (`context.x`, `context has x`): the only ones its answer depends on.

    A policy that uses the context as a whole value (`context == {...}`) reads every attribute.
    """
    read: set[str] = set()
    stack: list[Any] = [est]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            for operator, operand in node.items():
                if operator in (".", "has") and isinstance(operand, Mapping) and \
                        operand.get("left") == {"Var": "context"} and isinstance(operand.get("attr"), str):
                    read.add(operand["attr"])
                elif operator == "Var" and operand == "context":
                    return frozenset(CONTEXT_TYPES)
                else:
                    stack.append(operand)
        elif isinstance(node, list):
            stack.extend(node)
    return frozenset(read)


def compile_rule(rule: Rule) -> CompiledPolicy:
    text = rule_cedar(rule)
    est = _parse_one(text, f"{rule.source}: rule {rule.id!r}", rule.id)
    attributes = context_attributes(est)
    return CompiledPolicy(id=rule.id, effect=rule.effect, cedar=text, est=est, source=str(rule.source),
                          tools=rule.tools, attributes=attributes, reason=rule.reason, approval=rule.approval,
                          when={**rule.when})


def approval_mode_policy(user: str, mode: str, approval: Approval) -> CompiledPolicy:
    """`always-ask` or `ask-when-risky` for one user, as an approval rule over every tool."""
    risky = mode == "ask-when-risky"
    rule = Rule(id=f"approval-mode:{user}", effect="approve", tools=("*",), source=Source("approval_modes"),
                users=(user,), when={"risky": True} if risky else {},
                reason=f"{user} asks for approval {'when a call is risky' if risky else 'for every call'}",
                approval=approval)
    compiled = compile_rule(rule)
    return CompiledPolicy(**{**compiled.__dict__, "tools": None})


_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|//[^\n]*|;', re.DOTALL)
_LEADING = re.compile(r"(?:\s|//[^\n]*)*")


def split_cedar(text: str) -> list[tuple[int, str]]:
    """Raw Cedar text split into policies, each with the line it starts on (strings and comments respected)."""
    statements: list[tuple[int, str]] = []
    start = 0
    ends = [m.end() for m in _TOKENS.finditer(text) if m.group(0) == ";"]
    for end in [*ends, len(text)]:
        first = _LEADING.match(text, start).end()
        if first < end:
            statements.append((text.count("\n", 0, first) + 1, text[first:end]))
        start = end
    return statements


def compile_raw(raw: RawCedar, taken: set[str]) -> list[CompiledPolicy]:
    """Check each policy of a raw Cedar file; ids come from `@id(...)`, else `<file>#<n>`."""
    compiled = []
    file_name = raw.source.file.rsplit("/", 1)[-1]
    for index, (line, text) in enumerate(split_cedar(raw.text), 1):
        where = f"{raw.source.file}:{line}"
        est = _parse_one(text, where, f"{file_name}#{index}")
        annotations = est.get("annotations", {}) or {}
        policy_id = annotations.get("id") or f"{file_name}#{index}"
        if policy_id in taken:
            raise PackError(f"{where}: policy id {policy_id!r} is already used in this tenant: change its @id")
        taken.add(policy_id)
        approval = None
        effect = "allow" if est["effect"] == "permit" else "deny"
        if "approvers" in annotations:
            if est["effect"] != "forbid":
                raise PackError(f"{where}: @approvers belongs on a `forbid` policy (it holds a permitted call back "
                                "for approval)")
            try:
                approval = Approval(approvers=annotations["approvers"], quorum=int(annotations.get("quorum", "1")),
                                    timeout_s=float(annotations.get("timeout", "900")))
            except ValueError:
                raise PackError(f"{where}: @quorum is a whole number and @timeout a number of seconds") from None
            effect = "approve"
        compiled.append(CompiledPolicy(id=policy_id, effect=effect, cedar=text, est=est, source=where, tools=None,
                                       attributes=context_attributes(est), reason=annotations.get("reason", ""),
                                       approval=approval))
    return compiled


def compile_tenant(policy: TenantPolicy) -> list[CompiledPolicy]:
    """Every Cedar policy of one tenant: its rules, its approval modes, its raw Cedar."""
    compiled = [compile_rule(rule) for rule in policy.rules]
    for user, mode in policy.approval_modes.items():
        if mode != "never" and policy.approval is not None:
            compiled.append(approval_mode_policy(user, mode, policy.approval))
    taken = {c.id for c in compiled}
    for raw in policy.cedar:
        compiled.extend(compile_raw(raw, taken))
    return compiled
