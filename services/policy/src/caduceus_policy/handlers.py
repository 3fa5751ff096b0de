"""Deciding tool calls: a ToolCallRequested in, a signed ToolCallDecided out; model usage in, budgets counted.

The grant is checked before anything else and is the only source of who is asking; the
call's digest must be the digest of its own arguments; the engine must answer within the
bound; rate limits and budgets are charged in the shared counters. Any failure, including a
bug, is a signed deny with the reason, never a crash and never an allow.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from prometheus_client import Counter, Histogram

from caduceus_bus import Delivery, EventConnection, Pull, Route, RouteTable, kv_bucket_subjects, through_elections
from caduceus_contracts import (
    MCP_ENDPOINT_CHANNEL,
    ApprovalTerms,
    CanonicalizationError,
    Decision,
    GrantExpired,
    McpFactsQuery,
    McpToolFacts,
    ModelCallDecided,
    ModelCallRequested,
    ModelDecision,
    ModelUsage,
    PolicyShadowDisagreed,
    RiskyFact,
    SessionGrant,
    SignatureError,
    SignedDecision,
    SignedModelDecision,
    Signer,
    ToolCallCompleted,
    ToolCallDecided,
    ToolCallRequested,
    ToolsReachAnswer,
    ToolsReachQuery,
    TurnStopped,
    subjects,
    utcnow,
)
from caduceus_policy.adapters.counters import LimitExceeded, SharedCounters
from caduceus_policy.adapters.turns import TurnRecords, turn_key
from caduceus_policy.bound import DecisionOverdue, InlineBound
from caduceus_policy.domain import PolicyEngine, Verdict
from caduceus_policy.envelope import CallRef, salvage_request
from caduceus_policy.facts import HostPaths, LexicalPaths, request_facts
from caduceus_policy.facts.tools import family_of
from caduceus_policy.keys import TrustedKeys
from caduceus_policy.limits import counter_key
from caduceus_policy.model_calls import ModelVerdict, decide_model_call
from caduceus_policy.pack.model import Approval, TenantPolicy, TurnLimits, turn_limits
from caduceus_policy.packs import LivePacks
from caduceus_policy.reach import could_allow
from caduceus_policy.turns import (
    FAILED_STATUSES,
    Stop,
    TurnRecord,
    failed,
    model_call,
    tool_call,
    used_tokens,
    wall_time_stop,
)

log = logging.getLogger(__name__)
# How long a decision waits out a NATS cluster electing the leader of a KV bucket (turn records, counters) before
# it is denied as unable to check them: well inside the planner's 10 s wait for a decision.
ELECTION_WAIT_S = 3.0
DEADLINE_POLICY_ID = "caduceus:deadline"
LIMIT_POLICY_PREFIX = "limit:"
GUARDRAILS_UNAVAILABLE = "caduceus:guardrails-unavailable"


def workspace_root(workspaces_dir: Path, tenant: str, workspace: str) -> PurePosixPath:
    """`<workspaces_dir>/<tenant>/<workspace>`: the directory the executor runs the call in."""
    return PurePosixPath(workspaces_dir.absolute()) / tenant / workspace


class Decider:
    """Everything a decision needs: the engine(s), trusted keys, the policy signing key, the layout."""

    def __init__(self, engine: PolicyEngine, keys: TrustedKeys, signer: Signer, workspaces_dir: Path,
                 decision_ttl_s: float = 60.0, *, follow_symlinks: bool = True) -> None:
        self.packs = engine if isinstance(engine, LivePacks) else LivePacks(engine)
        self.keys = keys
        self.signer = signer
        self.workspaces_dir = workspaces_dir
        self.decision_ttl_s = decision_ttl_s
        self.resolver = HostPaths() if follow_symlinks else LexicalPaths()

    @property
    def engine(self) -> PolicyEngine:
        """The live engine (replaced on hot reload)."""
        return self.packs.live

    def check(self, request: ToolCallRequested) -> SessionGrant | Verdict:
        """The verified grant, or a deny saying why the request cannot be decided on its merits."""
        try:
            grant = self.keys.verify_grant(request.grant)
        except SignatureError as exc:
            return Verdict("deny", f"session grant signature does not verify: {exc}")
        except GrantExpired as exc:
            return Verdict("deny", str(exc))
        for what, granted, asked in (
            ("tenant", grant.tenant, request.tenant),
            ("workspace", grant.workspace, request.workspace),
            ("session", grant.session_id, request.session_id),
        ):
            if granted != asked:
                return Verdict("deny", f"session grant is for {what} {granted!r}, not {asked!r}")
        try:
            computed = request.computed_digest()
        except CanonicalizationError as exc:
            return Verdict("deny", f"the call's arguments cannot be digested: {exc}")
        if computed != request.digest:
            return Verdict("deny", "digest does not match the call's arguments")
        return grant

    def evaluate(self, engine: PolicyEngine, request: ToolCallRequested, grant: SessionGrant,
                 mcp: McpToolFacts | None = None) -> Verdict:
        """The engine's verdict on a checked request (an engine failure is a deny saying so). `mcp` is what the
        MCP gateway says of an `mcp__` tool: its annotations become facts, its pin state may hold the call."""
        try:
            root = workspace_root(self.workspaces_dir, request.tenant, request.workspace)
            facts = request_facts(request.tenant, grant.roles, request.tool, request.args, root, user=grant.user,
                                  workspace=request.workspace, resolver=self.resolver,
                                  approval_mode=grant.approval_mode)
            if mcp is not None and mcp.pin != "unknown":
                annotations = mcp.annotations
                facts = dataclasses.replace(facts, facts={
                    **facts.facts, "mcp_read_only": bool(annotations.get("readOnlyHint")),
                    "mcp_destructive": not annotations.get("readOnlyHint") and annotations.get("destructiveHint",
                                                                                               True) is not False})
            verdict = engine.decide(facts)
            return verdict if mcp is None else mcp_gate(verdict, mcp, request.tool)
        except Exception as exc:
            log.exception("policy evaluation failed for call %s", request.call_id)
            return Verdict("deny", f"policy evaluation failed: {type(exc).__name__}: {exc}")

    def verdict_for(self, request: ToolCallRequested, engine: PolicyEngine | None = None) -> Verdict:
        checked = self.check(request)
        if isinstance(checked, Verdict):
            return checked
        return self.evaluate(engine or self.engine, request, checked)

    def sign(self, request: ToolCallRequested | CallRef, verdict: Verdict, version: str) -> ToolCallDecided:
        now = utcnow()
        decision = Decision(
            tenant=request.tenant, workspace=request.workspace, session_id=request.session_id,
            call_id=request.call_id, tool=request.tool, digest=request.digest, verdict=verdict.verdict,
            reason=verdict.reason[:2000], policy_ids=verdict.policy_ids, pack_version=version,
            **approval_fields(verdict, request.tool), issued_at=now,
            expires_at=now + timedelta(seconds=verdict.approval_timeout_s if verdict.verdict == "approve" and
                                       verdict.approval_timeout_s else self.decision_ttl_s),
        )
        return ToolCallDecided(tenant=request.tenant, call_id=request.call_id, workspace=request.workspace,
                               decision=SignedDecision.issue(self.signer, decision))

    def decide(self, request: ToolCallRequested) -> ToolCallDecided:
        """The signed decision for one request, without limits or a deadline (tests, tools)."""
        engine = self.engine
        return self.sign(request, self.verdict_for(request, engine), engine.version)


@dataclass
class DecisionService:
    """The asynchronous side of deciding: the deadline, shared limits, shadow comparison, publishing."""

    decider: Decider
    publisher: EventConnection
    counters: SharedCounters | None = None
    deadline_s: float = 0.5
    pool: ThreadPoolExecutor | None = None
    bound: InlineBound = field(default_factory=InlineBound)
    mcp_timeout_s: float = 3.0
    turns: TurnRecords | None = None

    def __post_init__(self) -> None:
        self.pool = self.pool or ThreadPoolExecutor(max_workers=4, thread_name_prefix="policy-decide")

    async def evaluate_within_bound(self, engine: PolicyEngine, request: ToolCallRequested,
                                    grant: SessionGrant, mcp: McpToolFacts | None = None) -> Verdict | None:
        """The engine's verdict, or None when it was not reached within the deadline.

        In place under a timer when the loop runs on the main thread (see bound.py), else in the worker pool.
        """
        if self.bound.available():
            try:
                return self.bound.run(partial(self.decider.evaluate, engine, request, grant, mcp), self.deadline_s)
            except DecisionOverdue:
                return None
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self.pool, self.decider.evaluate, engine, request, grant, mcp), self.deadline_s)
        except TimeoutError:
            return None

    async def decide(self, request: ToolCallRequested) -> ToolCallDecided:
        live, shadow = self.decider.packs.live, self.decider.packs.shadow
        checked = self.decider.check(request)
        if isinstance(checked, Verdict):
            return self.decider.sign(request, checked, live.version)
        grant = checked
        stopped = await self.guard_tool_call(request, grant)
        if stopped is not None:
            return self.decider.sign(request, stopped, live.version)
        mcp = await self.mcp_facts(request) if request.tool.startswith(MCP_PREFIX) else None
        verdict = await self.evaluate_within_bound(live, request, grant, mcp)
        if verdict is None:
            verdict = Verdict("deny", f"policy could not decide within {self.deadline_s * 1000:.0f} ms; denied "
                                      "(fail closed)", (DEADLINE_POLICY_ID,))
        if verdict.verdict != "deny" and verdict.limits:
            verdict = await self.charge(verdict, request, grant)
        decided = self.decider.sign(request, verdict, live.version)
        if shadow is not None:
            await self.compare(shadow, request, grant, decided)
        return decided

    # --- turn guardrails ---------------------------------------------------------------------------

    def tenant_policy(self, tenant: str) -> TenantPolicy | None:
        pack = getattr(self.decider.engine, "pack", None)
        return pack.tenants.get(tenant) if pack is not None else None

    def limits_of(self, grant: SessionGrant) -> TurnLimits:
        if grant.channel == MCP_ENDPOINT_CHANNEL:  # an outside MCP client's grant (identity reserves the channel)
            return TurnLimits()
        policy = self.tenant_policy(grant.tenant)
        return turn_limits(policy.guardrails, grant.roles, grant.workspace) if policy is not None else TurnLimits()

    async def guarded(self, grant: SessionGrant, step: Any, *, call_id: str, tool: str = "") -> Stop | None:
        """Apply one call to the turn's shared record; the stop when the call must not go (published once, when
        the turn stops). Raises when the record cannot be read or written (the caller fails closed)."""
        assert self.turns is not None

        def changed(record: TurnRecord) -> tuple[TurnRecord, tuple[Stop | None, bool]]:
            updated, stop = step(record)
            return updated, (stop, record.stop is None and stop is not None)

        key = turn_key(grant.tenant, grant.grant_id)
        record, (stop, newly) = await through_elections(lambda: self.turns.change(key, changed), ELECTION_WAIT_S,
                                                        f"turn record {key}")
        if newly:
            assert stop is not None
            log.info("turn %s of %s/%s stopped at %s", grant.grant_id, grant.tenant, grant.user, stop.policy_id)
            try:
                await self.publisher.publish(subjects.turn_stopped(grant.tenant), TurnStopped(
                    tenant=grant.tenant, turn_id=grant.grant_id, workspace=grant.workspace,
                    session_id=grant.session_id, user=grant.user, limit=stop.limit, guardrail=stop.guardrail,
                    reason=stop.reason[:2000], call_id=call_id, tool=tool, tool_calls=record.tool_calls,
                    model_calls=record.model_calls, tokens=record.tokens))
            except Exception:  # the stop holds in the record; the refused call's decision still names it
                log.exception("could not publish the stop of turn %s", grant.grant_id)
        return stop

    async def guard_tool_call(self, request: ToolCallRequested, grant: SessionGrant) -> Verdict | None:
        """A deny when the call's turn is stopped or this call stops it (limits, wall time, a loop). Without turn
        records (a DecisionService used without the bus, as with the rate-limit counters) nothing is counted."""
        limits = self.limits_of(grant)
        if not limits or self.turns is None:
            return None
        elapsed = (utcnow() - grant.issued_at).total_seconds()
        try:
            stop = await self.guarded(grant, lambda record: tool_call(
                record, limits, tenant=grant.tenant, tool=request.tool, digest=request.digest, elapsed_s=elapsed),
                call_id=request.call_id, tool=request.tool)
            if stop is None and limits.get("same_failing_call"):
                assert self.turns is not None
                await self.turns.remember_call(request.tenant, request.call_id,
                                               turn_key(grant.tenant, grant.grant_id), request.digest)
        except Exception as exc:
            log.exception("turn guardrails unavailable for call %s", request.call_id)
            return Verdict("deny", f"turn guardrails cannot be checked ({type(exc).__name__}); denied (fail closed)",
                           (GUARDRAILS_UNAVAILABLE,))
        return None if stop is None else Verdict("deny", stop.reason, (stop.policy_id,))

    async def guard_model_call(self, request: ModelCallRequested, grant: SessionGrant) -> ModelVerdict | None:
        """The same for a model call: the turn's model calls, tokens and wall time."""
        limits = self.limits_of(grant)
        if not limits or self.turns is None:
            return None
        elapsed = (utcnow() - grant.issued_at).total_seconds()
        try:
            stop = await self.guarded(grant, lambda record: model_call(
                record, limits, tenant=grant.tenant, estimated_tokens=request.estimated_tokens, elapsed_s=elapsed,
                prompt_digest=request.prompt_digest),
                call_id=request.call_id)
        except Exception as exc:
            log.exception("turn guardrails unavailable for model call %s", request.call_id)
            return ModelVerdict("deny", f"turn guardrails cannot be checked ({type(exc).__name__}); denied (fail "
                                        "closed)", (GUARDRAILS_UNAVAILABLE,))
        return None if stop is None else ModelVerdict("deny", stop.reason, (stop.policy_id,))

    async def mcp_facts(self, request: ToolCallRequested) -> McpToolFacts:
        """The MCP gateway's facts about the call's tool; `unknown` (the call is then denied) when it is down."""
        query = McpFactsQuery(tenant=request.tenant, workspace=request.workspace, tool=request.tool)
        try:
            reply = await self.publisher.nc.request(subjects.mcp_facts(request.tenant),
                                                    query.model_dump_json().encode(), timeout=self.mcp_timeout_s)
            return McpToolFacts.model_validate_json(reply.data)
        except Exception as exc:
            log.warning("no MCP facts for %s (%s): %s", request.tool, request.call_id, type(exc).__name__)
            return McpToolFacts(pin="unknown")

    async def charge(self, verdict: Verdict, request: ToolCallRequested, grant: SessionGrant) -> Verdict:
        if self.counters is None:
            return verdict
        try:
            await through_elections(lambda: self.counters.enforce(
                verdict.limits, tenant=request.tenant, user=grant.user, tool=request.tool, workspace=request.workspace),
                ELECTION_WAIT_S, f"rate limits of call {request.call_id}")
        except LimitExceeded as exc:
            return Verdict("deny", f"over the limit {exc.limit.id} ({exc.limit.describe()}); try again later",
                           (f"{LIMIT_POLICY_PREFIX}{exc.limit.id}",), facts=verdict.facts)
        except Exception as exc:
            log.exception("rate-limit counters unavailable for call %s", request.call_id)
            return Verdict("deny", f"rate limits cannot be checked ({type(exc).__name__}); denied (fail closed)",
                           ("caduceus:limits-unavailable",), facts=verdict.facts)
        return verdict

    async def compare(self, shadow: PolicyEngine, request: ToolCallRequested, grant: SessionGrant,
                      decided: ToolCallDecided) -> None:
        """Decide again with the shadow pack (never used for the call) and record a disagreement."""
        live = decided.decision.decision
        candidate = await self.evaluate_within_bound(shadow, request, grant)
        if candidate is None:
            candidate = Verdict("deny", "shadow pack did not decide in time", (DEADLINE_POLICY_ID,))
        if candidate.verdict == live.verdict:
            return
        self.decider.packs.disagreements += 1
        event = PolicyShadowDisagreed(
            tenant=request.tenant, call_id=request.call_id, workspace=request.workspace, tool=request.tool,
            live_version=live.pack_version, live_verdict=live.verdict, live_policy_ids=live.policy_ids,
            shadow_version=shadow.version, shadow_verdict=candidate.verdict, shadow_policy_ids=candidate.policy_ids,
            shadow_reason=candidate.reason[:1000])
        await self.publisher.publish(subjects.policy_shadow(request.tenant), event)


MCP_PREFIX = "mcp__"
# The risky fact that carries an MCP tool's definition digest to the approvers and back to the gateway.
MCP_DEFINITION_FACT = "mcp_definition"


def mcp_gate(verdict: Verdict, mcp: McpToolFacts, tool: str) -> Verdict:
    """What the MCP gateway's pin state does to a verdict: an unknown tool or a changed definition is denied,
    a first use (no pin yet) waits for the server's approvers, who are shown the definition."""
    if verdict.verdict == "deny":
        return verdict
    if mcp.pin == "unknown":
        return Verdict("deny", f"the MCP gateway cannot vouch for {tool} (not registered here, or the gateway or "
                               "its server is unreachable); denied (fail closed)", ("caduceus:mcp-unknown",),
                       facts=verdict.facts)
    if mcp.pin == "changed":
        return Verdict("deny", f"{tool}'s definition changed since it was approved; withheld until its new "
                               "definition is approved", ("caduceus:mcp-definition-changed",), facts=verdict.facts)
    if mcp.pin == "unpinned":
        shown = json.dumps(mcp.definition, sort_keys=True)[:400]
        approval = verdict.approval or Approval(approvers=mcp.approvers or "admin")
        approval = dataclasses.replace(approval, approvers=mcp.approvers or approval.approvers)
        return Verdict("approve", f"first use of MCP tool {tool}: approving pins this definition: {shown}",
                       (*verdict.policy_ids, "caduceus:mcp-first-use"), approval=approval, limits=verdict.limits,
                       facts=verdict.facts, risky=((MCP_DEFINITION_FACT, mcp.digest), *verdict.risky))
    return verdict


# Which argument of a tool family the risky facts are about, so approvers see the value highlighted.
FAMILY_ARGUMENT = {"terminal": "command", "file": "path", "code": "code", "web": "url"}


def approval_fields(verdict: Verdict, tool: str) -> dict[str, Any]:
    """What an approve decision tells the approval service: who must agree, on what terms, and why."""
    if verdict.verdict != "approve" or verdict.approval is None:
        return {}
    terms = verdict.approval
    argument = FAMILY_ARGUMENT.get(family_of(tool))
    facts = tuple(RiskyFact(name=name, value=evidence[:500] or True, argument=argument)
                  for name, evidence in verdict.risky)
    return {
        "approver_group": terms.approvers, "quorum": terms.quorum, "explanation": verdict.reason[:2000], "facts": facts,
        "approval": ApprovalTerms(groups=(terms.approvers,), quorum=terms.quorum, timeout_s=terms.timeout_s,
                                  escalate_to=terms.escalate_to, escalate_after_s=terms.escalate_after_s,
                                  remind_every_s=terms.remind_every_s, self_approval=terms.self_approval),
    }


DECISIONS = Counter("caduceus_policy_decisions_total", "Decisions made, by verdict and by each rule that made them",
                    ["verdict", "rule"])
DECISION_SECONDS = Histogram("caduceus_policy_decision_seconds", "Time to decide one call (grant, digest, facts, "
                             "rules, limits, signature)", ["verdict"],
                             buckets=(.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1))


async def decide_request(service: DecisionService, request: ToolCallRequested) -> None:
    """Decide one request and publish the signed decision."""
    started = time.perf_counter()
    decided = await service.decide(request)
    decision = decided.decision.decision
    DECISION_SECONDS.labels(decision.verdict).observe(time.perf_counter() - started)
    for rule in decision.policy_ids or ("(none)",):
        DECISIONS.labels(decision.verdict, rule).inc()
    log.info("call %s (%s) in %s: %s %s", request.call_id, request.tool, request.tenant, decision.verdict,
             ",".join(decision.policy_ids))
    await service.publisher.publish(subjects.tool_decided(request.tenant), decided)


async def deny_unreadable(service: DecisionService, delivery: Delivery) -> None:
    """A request too broken to parse (invalid UTF-8, nested past the parser's limit, oversized) is still
    answered with a signed deny when its envelope names the call, so the planner learns why at once."""
    salvaged = salvage_request(delivery.subject, delivery.data)
    if salvaged is None:
        return
    call, why = salvaged
    decided = service.decider.sign(call, Verdict("deny", f"the request could not be read: {why}",
                                                 ("caduceus:unreadable-request",)), service.decider.engine.version)
    await service.publisher.publish(subjects.tool_decided(call.tenant), decided)


async def count_model_usage(service: DecisionService, batch: list[Delivery]) -> None:
    """Model usage events counted against budgets; one that cannot be counted now is delivered again."""
    assert service.counters is not None
    for delivery in batch:
        usage = delivery.event
        assert isinstance(usage, ModelUsage)
        try:
            # the turn first: it counts a call once, so a redelivery after the budgets failed adds nothing there
            await count_turn_tokens(service, usage)
            await on_model_usage(usage, service.decider, service.counters)
        except Exception:
            log.exception("could not count usage event %s", usage.event_id)
            await delivery.nak(1.0)


async def count_turn_tokens(service: DecisionService, usage: ModelUsage) -> None:
    """Add a model call's real tokens to its turn, when the tenant limits tokens per turn."""
    policy = service.tenant_policy(usage.tenant)
    if not usage.turn_id or policy is None or not any(g.tokens for g in policy.guardrails):
        return
    assert service.turns is not None
    tokens = usage.prompt_tokens + usage.completion_tokens
    await service.turns.change(turn_key(usage.tenant, usage.turn_id),
                               lambda record: (used_tokens(record, tokens, usage.call_id), None))


async def count_failed_call(service: DecisionService, completed: ToolCallCompleted) -> None:
    """A failed, denied or refused call counts against its turn's `same_failing_call` limit."""
    if completed.status not in FAILED_STATUSES or service.turns is None:
        return
    policy = service.tenant_policy(completed.tenant)
    if policy is None or not any(g.same_failing_call for g in policy.guardrails):
        return
    charged = await service.turns.call_of(completed.tenant, completed.call_id)
    if charged is None:
        return  # not a call of a guarded turn (or one this policy never charged)
    key, digest = charged
    await service.turns.change(key, lambda record: (failed(record, digest), None))


async def on_model_usage(usage: ModelUsage, decider: Decider, counters: SharedCounters) -> None:
    """Count one model call against the token and cost budgets of its tenant's live pack."""
    engine = decider.engine
    tenants = getattr(engine, "pack", None)
    policy = tenants.tenants.get(usage.tenant) if tenants is not None else None
    if policy is None:
        return
    budgets = [limit for limit in policy.limits if limit.kind != "calls"]
    await counters.record_usage(budgets, tenant=usage.tenant, user=usage.user, workspace=usage.workspace,
                                tokens=usage.prompt_tokens + usage.completion_tokens, cost_usd=usage.cost_usd)


async def answer_reachable(decider: Decider, msg: Any) -> None:
    """Which of the asked tools the live pack could ever allow for the grant's person (none for a bad grant)."""
    allowed: tuple[str, ...] = ()
    try:
        query = ToolsReachQuery.model_validate_json(msg.data)
        grant = decider.keys.verify_grant(query.grant)
        if msg.subject == subjects.policy_reachable(grant.tenant):
            pack = getattr(decider.engine, "pack", None)
            policy = pack.tenants.get(grant.tenant) if pack is not None else None
            allowed = tuple(t for t in query.tools if could_allow(policy, t, user=grant.user, roles=grant.roles))
    except Exception as exc:
        log.warning("tool reach question refused: %s", exc)
    with contextlib.suppress(Exception):
        await msg.respond(ToolsReachAnswer(tools=allowed).model_dump_json().encode())
BUDGET_POLICY_PREFIX = "budget:"


async def budget_refusal(counters: SharedCounters | None, policy: Any, grant: SessionGrant,
                         estimated_tokens: int) -> ModelVerdict | None:
    """A deny when a token or cost budget of the person or tenant cannot take this call, saying what is left."""
    if policy is None or counters is None:
        return None
    budgets = [limit for limit in policy.limits if limit.kind != "calls" and limit.applies("", grant.roles)]
    shares, exhausted = [], []
    for limit in budgets:
        key = counter_key(grant.tenant, limit.id, limit.scope(tenant=grant.tenant, user=grant.user, tool="",
                                                              workspace=grant.workspace))
        used = await counters.total(key, limit.window_s)
        remaining = max(0.0, limit.maximum - used)
        unit = "tokens" if limit.kind == "tokens" else "USD"
        share = remaining / limit.maximum if limit.maximum > 0 else 0.0
        shares.append(f"{limit.id}: {remaining:g} {unit} of {limit.describe()} left ({share:.0%})")
        need = float(estimated_tokens) if limit.kind == "tokens" else 0.0
        if used >= limit.maximum or (need and used + need > limit.maximum):
            exhausted.append(limit)
    if not exhausted:
        return None
    names = ", ".join(limit.id for limit in exhausted)
    return ModelVerdict("deny", f"over budget ({names}): {'; '.join(shares)}; this call needs about "
                                f"{estimated_tokens} tokens. Ask an admin for more, or wait for the window to pass",
                        tuple(f"{BUDGET_POLICY_PREFIX}{limit.id}" for limit in exhausted))


async def decide_model_request(service: DecisionService, request: ModelCallRequested) -> None:
    """Decide one model call (grant, prompt digest, budgets before the call, data rules, route) and publish it."""
    decider = service.decider
    engine = decider.engine
    verdict: ModelVerdict
    deadline: dict[str, Any] = {}
    try:
        grant = decider.keys.verify_grant(request.grant)
        mismatch = next((f"session grant is for {what} {granted!r}, not {asked!r}" for what, granted, asked in (
            ("tenant", grant.tenant, request.tenant), ("workspace", grant.workspace, request.workspace),
            ("session", grant.session_id, request.session_id)) if granted != asked), None)
        if mismatch:
            verdict = ModelVerdict("deny", mismatch)
        elif hashlib.sha256(request.prompt.encode("utf-8", "surrogatepass")).hexdigest() != request.prompt_digest:
            verdict = ModelVerdict("deny", "prompt digest does not match the prompt")
        elif (stopped := await service.guard_model_call(request, grant)) is not None:
            verdict = stopped
        else:
            if wall := wall_time_stop(service.limits_of(grant), grant.tenant):
                deadline = {"turn_deadline": grant.issued_at + timedelta(seconds=wall[0]), "turn_stop": wall[1]}
            pack = getattr(engine, "pack", None)
            policy = pack.tenants.get(request.tenant) if pack is not None else None
            try:
                refusal = await through_elections(
                    lambda: budget_refusal(service.counters, policy, grant, request.estimated_tokens), ELECTION_WAIT_S,
                    f"budgets of model call {request.call_id}")
            except Exception as exc:
                log.exception("budgets unavailable for model call %s", request.call_id)
                refusal = ModelVerdict("deny", f"budgets cannot be checked ({type(exc).__name__}); denied (fail "
                                               "closed)", ("caduceus:limits-unavailable",))
            verdict = refusal or decide_model_call(policy, roles=grant.roles, workspace=request.workspace,
                                                   prompt=request.prompt)
    except SignatureError as exc:
        verdict = ModelVerdict("deny", f"session grant signature does not verify: {exc}")
    except GrantExpired as exc:
        verdict = ModelVerdict("deny", str(exc))
    except Exception as exc:
        log.exception("model call %s could not be decided", request.call_id)
        verdict = ModelVerdict("deny", f"policy evaluation failed: {type(exc).__name__}: {exc}")
    now = utcnow()
    decision = ModelDecision(
        tenant=request.tenant, workspace=request.workspace, session_id=request.session_id, call_id=request.call_id,
        prompt_digest=request.prompt_digest, verdict=verdict.verdict, reason=verdict.reason[:2000],
        policy_ids=verdict.policy_ids, pack_version=engine.version, upstream=verdict.upstream,
        data_classes=verdict.data_classes, redact_prompt=verdict.redact_prompt,
        redact_response=verdict.redact_response, deny_response=verdict.deny_response, issued_at=now,
        expires_at=now + timedelta(seconds=decider.decision_ttl_s), **deadline)
    for rule in decision.policy_ids or ("(none)",):
        DECISIONS.labels(decision.verdict, rule).inc()
    log.info("model call %s in %s: %s %s", request.call_id, request.tenant, decision.verdict,
             ",".join(decision.policy_ids))
    await service.publisher.publish(subjects.model_decided(request.tenant), ModelCallDecided(
        tenant=request.tenant, call_id=request.call_id, workspace=request.workspace,
        decision=SignedModelDecision.issue(decider.signer, decision)))


LIMITS_BUCKET = "caduceus_policy_limits"
TURNS_BUCKET = "caduceus_policy_turns"
PACKS_BUCKET = "caduceus_policy_packs"
USAGE_CONSUMER = "policy-usage"

# Every message policy handles. Requests go to one replica each (a queue group); model usage comes from a
# durable consumer all replicas share. Decisions are published only by policy and approval (a test checks it).
ROUTES = RouteTable(
    role="policy",
    routes=(
        Route(subjects.TOOL_REQUESTED_ALL, ToolCallRequested, decide_request, queue="policy", concurrency=16,
              salvage=deny_unreadable),
        Route(subjects.MODEL_USAGE_ALL, ModelUsage, count_model_usage, delivery=Pull(USAGE_CONSUMER, batch=64)),
        Route(subjects.MODEL_REQUESTED_ALL, ModelCallRequested, decide_model_request, queue="policy",
              concurrency=16),
        # outcomes of tool calls, for turn guardrails' failing-call loops (the broker reports malformed ones)
        Route(subjects.TOOL_COMPLETED_ALL, ToolCallCompleted, count_failed_call, queue="policy", concurrency=16,
              malformed="ignore"),
    ),
    publishes=(
        subjects.TOOL_DECIDED_ALL,
        subjects.MODEL_DECIDED_ALL,
        subjects.POLICY_EVENTS,
        subjects.MCP_FACTS_ALL,  # asks the MCP gateway about an mcp__ tool (request/reply)
        # rate limits and budgets shared by every replica
        *kv_bucket_subjects(LIMITS_BUCKET),
        # per-turn guardrail records shared by every replica
        *kv_bucket_subjects(TURNS_BUCKET),
    ),
    grants=("stream-setup", "policy-packs"),
    # Requests answered by app.py: which tools a person could ever be allowed (asked by the MCP gateway).
    extra_subscribes=(subjects.POLICY_REACHABLE_ALL,),
)
