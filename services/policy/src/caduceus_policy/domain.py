"""The walking-skeleton rule engine: per-tenant allow/approve/deny rules; deny overrides approve, approve
overrides allow; default deny.

Pure logic, no I/O. The service talks to it only through `PolicyEngine.decide`, so a
Cedar-backed engine can replace `RuleEngine` without touching the handler.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import PurePosixPath
from typing import Any, Literal, Protocol

from caduceus_contracts import ApprovalTerms, RiskyFact
from caduceus_policy.facts import FACT_ARGUMENTS, RequestFacts, request_facts

Effect = Literal["allow", "deny", "approve"]


@dataclass(frozen=True)
class Verdict:
    """What policy says about one call, why, and which rules said it."""

    verdict: Literal["allow", "deny", "approve"]
    reason: str
    policy_ids: tuple[str, ...] = ()
    # For `approve`: who must agree, and the facts that made the call risky.
    approval: ApprovalTerms | None = None
    facts: tuple[RiskyFact, ...] = ()


@dataclass(frozen=True)
class Rule:
    """One rule: `effect` applies to `tools` (fnmatch globs) for `roles` (None = any role) when facts match."""

    id: str
    effect: Effect
    tools: tuple[str, ...]
    roles: tuple[str, ...] | None = None
    when: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""
    approval: ApprovalTerms | None = None  # set exactly when effect is approve

    def matches(self, request: RequestFacts) -> bool:
        """True when this rule speaks about the request: tool, role and every `when` fact agree."""
        if not any(fnmatchcase(request.tool, pattern) for pattern in self.tools):
            return False
        if self.roles is not None and not set(self.roles) & set(request.roles):
            return False
        return all(request.facts.get(name) == expected for name, expected in self.when.items())


@dataclass(frozen=True)
class RuleSet:
    """A versioned rule file: each tenant's rules, in file order."""

    version: str
    tenants: Mapping[str, tuple[Rule, ...]]


class PolicyEngine(Protocol):
    """What the policy service needs from a rule engine: a version to sign, and a verdict per request."""

    @property
    def version(self) -> str: ...

    def decide(self, request: RequestFacts) -> Verdict: ...


def _reasons(rules: list[Rule], fallback: str) -> str:
    texts = dict.fromkeys(rule.reason or f"{fallback} by rule {rule.id}" for rule in rules)
    return "; ".join(texts)


def _approval(rules: list[Rule], request: RequestFacts) -> Verdict:
    """One approve verdict for the matching approve rules: the first rule's terms, every rule's risky facts."""
    facts = {name: RiskyFact(name=name, value=request.facts[name], argument=FACT_ARGUMENTS.get(name))
             for rule in rules for name, expected in rule.when.items() if expected}
    return Verdict("approve", _reasons(rules, "needs approval"), tuple(rule.id for rule in rules),
                   approval=rules[0].approval, facts=tuple(facts.values()))


def decide_with_rules(rules: RuleSet, request: RequestFacts) -> Verdict:
    """Deny if any deny rule matches, else approve if an approve rule does, else allow if an allow rule does,
    else deny."""
    tenant_rules = rules.tenants.get(request.tenant)
    if tenant_rules is None:
        return Verdict("deny", f"no policy rules for tenant {request.tenant!r} (policy {rules.version})")
    matched = [rule for rule in tenant_rules if rule.matches(request)]
    denies = [rule for rule in matched if rule.effect == "deny"]
    if denies:
        return Verdict("deny", _reasons(denies, "denied"), tuple(rule.id for rule in denies))
    approvals = [rule for rule in matched if rule.effect == "approve"]
    if approvals:
        return _approval(approvals, request)
    allows = [rule for rule in matched if rule.effect == "allow"]
    if allows:
        return Verdict("allow", _reasons(allows, "allowed"), tuple(rule.id for rule in allows))
    roles = ", ".join(request.roles)
    return Verdict("deny", f"no rule allows {request.tool} for roles [{roles}]")


def evaluate(
    rules: RuleSet,
    tenant: str,
    roles: tuple[str, ...] | list[str],
    tool: str,
    args: Mapping[str, Any],
    workspace_root: PurePosixPath | str,
) -> Verdict:
    """Decide one call without any server: extract its facts, then apply the tenant's rules."""
    request = request_facts(tenant, tuple(roles), tool, args, PurePosixPath(workspace_root))
    return decide_with_rules(rules, request)


@dataclass(frozen=True)
class RuleEngine:
    """The YAML rule engine behind the `PolicyEngine` interface."""

    rules: RuleSet

    @property
    def version(self) -> str:
        return self.rules.version

    def decide(self, request: RequestFacts) -> Verdict:
        return decide_with_rules(self.rules, request)
