"""The Cedar engine: a compiled pack deciding calls with cedarpy, and explaining each decision.

Per tenant and per tool, only the policies that can speak about that tool are handed to
Cedar (with the context attributes they read), so a 1,000-rule pack costs about what its
few rules for `terminal` cost. A call Cedar cannot evaluate cleanly is denied.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cedarpy

from caduceus_policy.domain import Verdict
from caduceus_policy.facts import RequestFacts, is_risky
from caduceus_policy.facts.content import classify, strings_in
from caduceus_policy.pack.compiler import (
    ACTION,
    NAMESPACE,
    CompiledPolicy,
    approval_mode_policy,
    compile_tenant,
)
from caduceus_policy.pack.loader import ALL_TENANTS, load_pack, parse_pack
from caduceus_policy.pack.model import Approval, Pack, TenantPolicy, format_duration, tool_matches

ENTITIES = cedarpy.Entities.from_json_str("[]")
MAX_CACHED_TOOLS = 4096
ARGUMENTS_POLICY_ID = "caduceus:arguments"
NO_TENANT_POLICY_ID = "caduceus:no-tenant-policy"
EVALUATION_POLICY_ID = "caduceus:evaluation-error"
APPROVAL_MODE_POLICY_ID = "caduceus:approval-mode"


def policy_set(policies: list[CompiledPolicy]) -> cedarpy.PolicySet:
    """A Cedar policy set whose policy ids are the pack's ids (so Cedar's reasons name them)."""
    document = {"staticPolicies": {p.id: p.est for p in policies}, "templates": {}, "templateLinks": []}
    return cedarpy.PolicySet.from_json_str(json.dumps(document))


@dataclass
class _ToolPolicies:
    """The policies of one tenant that can speak about one tool, ready for Cedar."""

    policies: list[CompiledPolicy]
    attributes: tuple[str, ...]
    cedar: cedarpy.PolicySet | None
    has_approvals: bool
    _granting: cedarpy.PolicySet | None = None

    def granting(self) -> cedarpy.PolicySet:
        """The same policies without the approval ones: would the call be permitted if nobody had to approve?"""
        if self._granting is None:
            self._granting = policy_set([p for p in self.policies if p.effect != "approve"])
        return self._granting


@dataclass
class CompiledTenant:
    policy: TenantPolicy
    policies: list[CompiledPolicy]
    by_id: dict[str, CompiledPolicy] = field(default_factory=dict)
    _per_tool: dict[str, _ToolPolicies] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_id = {p.id: p for p in self.policies}
        self.position = {p.id: index for index, p in enumerate(self.policies)}

    def matched(self, reasons: list[str]) -> list[CompiledPolicy]:
        """Cedar's reasons (an unordered set) as policies, in pack order: explanations must not vary."""
        return [self.by_id[i] for i in sorted((i for i in reasons if i in self.by_id), key=self.position.__getitem__)]

    def for_tool(self, tool: str) -> _ToolPolicies:
        cached = self._per_tool.get(tool)
        if cached is not None:
            return cached
        chosen = [p for p in self.policies if tool_matches(p.tools, tool)]
        # Only what the policies read: each context attribute costs Cedar time to build, read or not.
        attributes = tuple(sorted(frozenset().union(*(p.attributes for p in chosen))))
        entry = _ToolPolicies(policies=chosen, attributes=attributes, cedar=policy_set(chosen) if chosen else None,
                              has_approvals=any(p.effect == "approve" for p in chosen))
        if len(self._per_tool) >= MAX_CACHED_TOOLS:
            self._per_tool.clear()  # tool names come from requests: never let them grow memory without bound
        self._per_tool[tool] = entry
        return entry


def _cedar_value(value: Any) -> Any:
    if isinstance(value, set | frozenset | tuple | list):
        return sorted(str(v) for v in value)
    return value


class CedarEngine:
    """A pack compiled to Cedar: `decide` gives the verdict, its explanation, and the limits to check."""

    def __init__(self, pack: Pack) -> None:
        self.pack = pack
        self.tenants = {name: CompiledTenant(policy, compile_tenant(policy)) for name, policy in pack.tenants.items()}

    @property
    def version(self) -> str:
        return self.pack.version

    def cedar_text(self, tenant: str) -> str:
        """Every Cedar policy of a tenant, as text (what `caduceus policy check --cedar` prints)."""
        compiled = self.tenants.get(tenant) or self.tenants.get(ALL_TENANTS)
        return "\n\n".join(p.cedar for p in compiled.policies) if compiled else ""

    def decide(self, request: RequestFacts) -> Verdict:
        if request.problem is not None:
            return Verdict("deny", f"the call's arguments cannot be judged: {request.problem}", (ARGUMENTS_POLICY_ID,))
        tenant = self.tenants.get(request.tenant) or self.tenants.get(ALL_TENANTS)
        if tenant is None:
            return Verdict("deny", f"policy pack {self.version} has no policy for tenant {request.tenant!r}",
                           (NO_TENANT_POLICY_ID,))
        facts, evidence = self.tenant_facts(tenant.policy, request)
        chosen = tenant.for_tool(request.tool)
        if chosen.cedar is None:
            return self.nothing_permits(request, facts)
        cedar_request = {
            "principal": {"type": f"{NAMESPACE}::User", "id": request.user or "unknown"},
            "action": ACTION,
            "resource": {"type": f"{NAMESPACE}::Tool", "id": request.tool},
            "context": {name: _cedar_value(facts[name]) for name in chosen.attributes if name in facts},
        }
        result = cedarpy.is_authorized(cedar_request, chosen.cedar, ENTITIES)
        if result.diagnostics.errors:
            return Verdict("deny", f"policy could not be evaluated ({'; '.join(result.diagnostics.errors)[:300]}); "
                                   "denied", (EVALUATION_POLICY_ID,), facts=facts)
        matched = tenant.matched(result.diagnostics.reasons)
        if result.allowed:
            asked = self.asked_by_person(request, tenant, facts)
            if isinstance(asked, Verdict):
                return asked
            if asked is not None:
                return self.approve(request, tenant, [asked], matched, facts, evidence)
            return self.allowed(request, tenant, matched, facts, evidence)
        denies = [p for p in matched if p.effect == "deny"]
        if denies:
            return Verdict("deny", "; ".join(_because(p, request, evidence) for p in denies),
                           tuple(p.id for p in denies), facts=facts)
        if not matched:
            return self.nothing_permits(request, facts)
        # Only approval policies held it back: approve if, without them, the call would be permitted.
        granting = cedarpy.is_authorized(cedar_request, chosen.granting(), ENTITIES)
        if not granting.allowed or granting.diagnostics.errors:
            return self.nothing_permits(request, facts)
        grants = tenant.matched(granting.diagnostics.reasons)
        return self.approve(request, tenant, matched, grants, facts, evidence)

    def tenant_facts(self, policy: TenantPolicy, request: RequestFacts) -> tuple[dict[str, Any], dict[str, str]]:
        """The request's facts plus those the tenant's pack defines: data classes and MCP annotations."""
        facts: dict[str, Any] = {**request.facts, "tenant": request.tenant, "workspace": request.workspace,
                                 "user": request.user, "tool": request.tool, "roles": request.roles}
        evidence = dict(request.evidence)
        if policy.classifiers:
            found = classify(strings_in(request.args), policy.classifiers)
            if found:
                facts["data_classes"] = set(found)
                evidence["data_classes"] = ", ".join(f"{k}: {v}" for k, v in found.items())[:160]
                if facts.get("outbound_to"):
                    # Classified data on its way out: named by class and destination, never by the value found.
                    facts["outbound_data"] = set(facts.get("outbound_data", ())) | set(found)
                    sent = f"classified data ({', '.join(sorted(found))}) to {', '.join(sorted(facts['outbound_to']))}"
                    evidence["outbound_data"] = "; ".join(filter(None, (evidence.get("outbound_data"), sent)))[:200]
        # The pack's annotations for a server win; else the pinned definition's, as the MCP gateway served them.
        if facts.get("family") == "mcp" and (facts["mcp_server"] in policy.mcp or "mcp_read_only" not in facts):
            notes = policy.mcp_annotations(facts["mcp_server"], facts["mcp_tool"])
            facts["mcp_read_only"], facts["mcp_destructive"] = notes.read_only, notes.destructive
        risky = is_risky(facts)
        facts["risky"] = risky is not None
        if risky and "risky" not in evidence:
            evidence["risky"] = f"{risky}: {evidence.get(risky, '')}".rstrip(": ")
        return facts, evidence

    def allowed(self, request: RequestFacts, tenant: CompiledTenant, grants: list[CompiledPolicy],
                facts: Mapping[str, Any], evidence: Mapping[str, str]) -> Verdict:
        grants = [p for p in grants if p.effect == "allow"]
        reason = "; ".join(_because(p, request, evidence) for p in grants)
        return Verdict("allow", reason, tuple(p.id for p in grants), limits=self.limits(tenant, request), facts=facts)

    def approve(self, request: RequestFacts, tenant: CompiledTenant, approvals: list[CompiledPolicy],
                grants: list[CompiledPolicy], facts: Mapping[str, Any], evidence: Mapping[str, str]) -> Verdict:
        settings = [p.approval for p in approvals if p.approval is not None]
        # The first approving policy names who; together they ask the most agreement in the least time.
        approval = dataclasses.replace(settings[0], quorum=max(a.quorum for a in settings),
                                       timeout_s=min(a.timeout_s for a in settings),
                                       self_approval=all(a.self_approval for a in settings))
        because = "; ".join(_because(p, request, evidence) for p in approvals)
        reason = (f"needs approval by {approval.approvers} (quorum {approval.quorum}, within "
                  f"{format_duration(approval.timeout_s)}): {because}")
        risky = tuple((fact, evidence.get(fact, "")) for p in approvals for fact in p.when if facts.get(fact))
        return Verdict("approve", reason, tuple(p.id for p in [*approvals, *grants]), approval=approval,
                       limits=self.limits(tenant, request), facts=facts, risky=tuple(dict(risky).items()))

    @staticmethod
    def asked_by_person(request: RequestFacts, tenant: CompiledTenant,
                        facts: Mapping[str, Any]) -> CompiledPolicy | Verdict | None:
        """The approval a person's own mode (their grant's, from tenants.yaml) asks for on a permitted call.

        Modes only ever add approvals: the pack's per-user mode still applies, so the stricter one wins.
        """
        mode = request.approval_mode
        if mode not in ("always-ask", "ask-when-risky") or (mode == "ask-when-risky" and not facts.get("risky")):
            return None
        approval = tenant.policy.approval
        if approval is None:
            return Verdict("deny", f"{request.user} asks for approval ({mode}, tenants.yaml) but the pack names no "
                                   "approvers for this tenant: add an `approvals` section", (APPROVAL_MODE_POLICY_ID,),
                           facts=facts)
        return _person_mode_policy(request.user or "unknown", mode, approval)

    def nothing_permits(self, request: RequestFacts, facts: Mapping[str, Any]) -> Verdict:
        roles = ", ".join(request.roles)
        return Verdict("deny", f"no rule allows {request.tool} for roles [{roles}]", facts=facts)

    @staticmethod
    def limits(tenant: CompiledTenant, request: RequestFacts) -> tuple:
        return tuple(limit for limit in tenant.policy.limits if limit.applies(request.tool, request.roles))


@functools.lru_cache(maxsize=4096)
def _person_mode_policy(user: str, mode: str, approval: Approval) -> CompiledPolicy:
    return approval_mode_policy(user, mode, approval)


def _because(policy: CompiledPolicy, request: RequestFacts, evidence: Mapping[str, str]) -> str:
    """One policy's part of an explanation: its reason, and what in the call matched its facts."""
    default = {"allow": f"{policy.id} allows {request.tool}", "deny": f"denied by {policy.id}",
               "approve": f"{policy.id} asks for approval"}[policy.effect]
    text = policy.reason or default
    shown = [f"{fact}: {evidence[fact]}" for fact in policy.when if fact in evidence]
    return f"{text} ({'; '.join(shown)})" if shown else text


def load_engine(path: Path) -> CedarEngine:
    """The engine a pack on disk describes (a YAML or Cedar file, or a directory of them); what the service,
    `caduceus policy ...` and audit replay decide with. Raises PackError naming the file, line and fix."""
    return CedarEngine(load_pack(path))


def engine_from_files(files: Mapping[str, str], origin: str = "") -> CedarEngine:
    """The engine for a pack given as its files (as published on the bus). Raises PackError."""
    return CedarEngine(parse_pack(files, origin=origin))
