"""Reading the YAML rule file (CADUCEUS_POLICY_FILE) into a RuleSet.

Every error names the file, where in it (tenant and rule) and what to change, so an
operator can fix a bad file from the one line the service prints before it exits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from caduceus_contracts import ApprovalTerms, subjects
from caduceus_policy.domain import PolicyEngine, Rule, RuleEngine, RuleSet
from caduceus_policy.facts import KNOWN_FACTS

RULE_KEYS = ("id", "effect", "tools", "roles", "when", "reason", "approval")
APPROVAL_KEYS = tuple(ApprovalTerms.model_fields)


class RuleFileError(ValueError):
    """The rule file is missing, not YAML, or does not follow the rule format."""


def load_rule_file(path: Path) -> RuleSet:
    """Read and check a rule file. Raises RuleFileError saying what is wrong and how to fix it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RuleFileError(
            f"policy file {path} not found: set CADUCEUS_POLICY_FILE to a rule file "
            "(the embedded stack copies its default policy.yaml into the state dir)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleFileError(f"policy file {path} cannot be read: {exc}") from None
    return parse_rules(text, source=str(path))


def load_engine(path: Path) -> PolicyEngine:
    """The policy engine a policy file describes; what the service, the CLI and audit replay all decide with.

    Raises RuleFileError (naming the file, where and what to fix) when the file is unusable.
    """
    return RuleEngine(load_rule_file(path))


def parse_rules(text: str, *, source: str = "<policy>") -> RuleSet:
    """Parse rule-file text (YAML). `source` names the file in error messages."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or exc
        raise RuleFileError(f"policy file {source} is not valid YAML{line}: {problem}") from None
    return rules_from_data(data, source=source)


def rules_from_data(data: Any, *, source: str = "<policy>") -> RuleSet:
    """Check already-parsed rule-file data and build the RuleSet."""

    def fail(where: str, problem: str) -> RuleFileError:
        return RuleFileError(f"policy file {source}{where}: {problem}")

    if not isinstance(data, Mapping):
        raise fail("", "expected a mapping with `version` and `tenants` (start from the default policy.yaml)")
    unknown = sorted(set(data) - {"version", "tenants"})
    if unknown:
        raise fail("", f"unknown top-level key(s) {unknown}: only `version` and `tenants` are allowed")
    version = data.get("version")
    if not isinstance(version, str) or not version.strip():
        raise fail("", 'set `version` to a quoted string, e.g. version: "2026-11-24.1"')
    tenants = data.get("tenants")
    if not isinstance(tenants, Mapping):
        raise fail("", "set `tenants` to a mapping of tenant name to {rules: [...]}")
    parsed: dict[str, tuple[Rule, ...]] = {}
    for tenant, body in tenants.items():
        where = f", tenant {tenant!r}"
        if not isinstance(tenant, str) or not subjects.TOKEN_RE.match(tenant):
            raise fail(where, "tenant names use 1-63 lowercase letters, digits, '-' or '_'")
        if not isinstance(body, Mapping) or set(body) != {"rules"} or not isinstance(body["rules"], list):
            raise fail(where, "give the tenant exactly one key, `rules`, holding a list of rules")
        rules: list[Rule] = []
        for index, raw in enumerate(body["rules"], start=1):
            location = f"{where}, {_rule_name(raw, index)}"
            rule = _rule(raw, lambda problem, at=location: fail(at, problem))
            if any(existing.id == rule.id for existing in rules):
                raise fail(location, "rule ids must be unique within a tenant: rename it")
            rules.append(rule)
        parsed[tenant] = tuple(rules)
    return RuleSet(version=version.strip(), tenants=parsed)


def _rule_name(raw: Any, index: int) -> str:
    if isinstance(raw, Mapping) and isinstance(raw.get("id"), str):
        return f"rule {raw['id']!r} (#{index})"
    return f"rule #{index}"


def _string_list(value: Any) -> tuple[str, ...] | None:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        return None
    return tuple(value)


def _rule(raw: Any, fail: Callable[[str], RuleFileError]) -> Rule:
    if not isinstance(raw, Mapping):
        raise fail(f"each rule is a mapping with keys {list(RULE_KEYS)}")
    unknown = sorted(set(raw) - set(RULE_KEYS))
    if unknown:
        raise fail(f"unknown key(s) {unknown}: a rule may have {list(RULE_KEYS)}")
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not rule_id.strip():
        raise fail("give the rule an `id` (a short name; decisions cite it)")
    effect = raw.get("effect")
    if effect not in ("allow", "deny", "approve"):
        raise fail(f"`effect` is {effect!r}: use `allow`, `deny` or `approve`")
    tools = _string_list(raw.get("tools"))
    if tools is None:
        raise fail("`tools` must be a non-empty list of tool names or globs, e.g. [read_file, 'mcp_*']")
    roles: tuple[str, ...] | None = None
    if "roles" in raw:
        roles = _string_list(raw["roles"])
        if roles is None:
            raise fail("`roles` must be a non-empty list of role names (leave it out to match any role)")
    when = raw.get("when") or {}
    if not isinstance(when, Mapping):
        raise fail("`when` must be a mapping of facts, e.g. {path_outside_workspace: true}")
    for fact, expected in when.items():
        if fact not in KNOWN_FACTS:
            raise fail(f"unknown fact {fact!r} in `when`: known facts are {sorted(KNOWN_FACTS)}")
        if not isinstance(expected, KNOWN_FACTS[fact]):
            raise fail(f"`when: {fact}` takes a {KNOWN_FACTS[fact].__name__}, not {expected!r}")
    reason = raw.get("reason", "")
    if not isinstance(reason, str):
        raise fail("`reason` must be text (it is shown to the person whose call was decided)")
    return Rule(id=rule_id.strip(), effect=effect, tools=tools, roles=roles, when=dict(when), reason=reason.strip(),
                approval=_approval_terms(effect, raw.get("approval"), fail))


def _approval_terms(effect: str, raw: Any, fail: Callable[[str], RuleFileError]) -> ApprovalTerms | None:
    """An approve rule's `approval:` terms (who, how many, how long); other effects take none."""
    if effect != "approve":
        if raw is not None:
            raise fail("only `effect: approve` rules take `approval:`")
        return None
    if not isinstance(raw, Mapping):
        raise fail(f"an approve rule needs `approval:` with {list(APPROVAL_KEYS)}, e.g. "
                   "{groups: [admin], quorum: 1, timeout_s: 900}")
    try:
        terms = ApprovalTerms.model_validate(dict(raw))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        if first["type"] == "extra_forbidden":
            raise fail(f"unknown key `approval.{where}`: approval terms are {list(APPROVAL_KEYS)}") from None
        raise fail(f"`approval.{where}`: {first['msg']}") from None
    if not (terms.groups or terms.roles or terms.users):
        raise fail("`approval` names nobody: give `groups`, `roles` or `users` who may approve")
    return terms
