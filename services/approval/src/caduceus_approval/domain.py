"""Approvals without I/O: what an approval is about, who may answer, how answers add up, and the signed result.

An approval is bound to one call digest: people approve or deny *that* call and nothing
else. Approvers are resolved once, when the approval opens, from the decision's terms and
the requester's tenant. Any counted deny denies; `quorum` distinct approvals allow; no
decision before the expiry denies. Requesters never answer their own call unless the
terms allow self-approval. Every answer is signed by the approval desk that verified the
person, so an answer that names an approver nobody verified does not count.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from caduceus_contracts import (
    ApprovalTerms,
    ApprovalView,
    ApprovalVote,
    Decision,
    Keyring,
    RiskyFact,
    SignatureError,
    SignedDecision,
    Signer,
    ToolCallDecided,
    ToolCallRequested,
)

Outcome = Literal["allow", "deny"]
Answer = Literal["approve", "deny"]
Status = Literal["pending", "approved", "denied", "expired"]
EXPIRED_REASON = "approval expired"
# The desk (web UI, CLI API, chat actions) signs every answer with this issuer's key.
DESK_ISSUER = "approval-desk"


@dataclass(frozen=True)
class Fact:
    """A risky fact about the call (from policy), and the argument it is about."""

    name: str
    value: str | bool | int | float
    argument: str | None = None


@dataclass(frozen=True)
class Panel:
    """Who may answer: `approvers` from the start, `escalation` too once escalated; how many must approve."""

    approvers: tuple[str, ...]
    escalation: tuple[str, ...] = ()
    quorum: int = 1
    self_approval: bool = False


@dataclass(frozen=True)
class ApprovalRequest:
    """One call waiting for people: the workflow's input (Temporal serializes it as JSON)."""

    tenant: str
    workspace: str
    session_id: str
    call_id: str
    tool: str
    digest: str
    reason: str
    # The window opens when the workflow starts (Temporal's clock), so the service's clock does not matter.
    window_s: float
    requester: str = ""
    args: dict[str, Any] = field(default_factory=dict)
    panel: Panel = Panel(approvers=())
    groups: tuple[str, ...] = ()
    escalate_to: tuple[str, ...] = ()
    escalate_after_s: float | None = None
    remind_every_s: float | None = None
    explanation: str = ""
    facts: tuple[Fact, ...] = ()
    conversation: str = ""
    policy_ids: tuple[str, ...] = ()
    # PEM of the desk's public key: only answers it signed count.
    desk_key: str = ""
    # The policy pack that asked for the approval: the approval's own decision names it too.
    pack_version: str = ""

    @property
    def workflow_id(self) -> str:
        return workflow_id(self.tenant, self.call_id)

    @property
    def approver_group(self) -> str | None:
        return self.groups[0] if self.groups else None


@dataclass(frozen=True)
class ApprovalAction:
    """What an approver sends: which call (by digest) they looked at, who they are, why, and the desk's signature."""

    digest: str
    approver: str
    comment: str = ""
    channel: str = "web"
    signature: str = ""


@dataclass(frozen=True)
class Vote:
    approver: str
    answer: Answer
    comment: str
    at: str  # ISO 8601, UTC (workflow time)


@dataclass(frozen=True)
class ApprovalState:
    """A snapshot of one approval: the workflow's query answer and result."""

    request: ApprovalRequest
    opened_at: str
    expires_at: str
    votes: tuple[Vote, ...] = ()
    escalated: bool = False
    status: Status = "pending"
    resolution: str = ""
    decided_at: str | None = None

    @property
    def verdict(self) -> Outcome | None:
        """The call's verdict once decided: allow when approved, deny when denied or expired."""
        if self.status == "pending":
            return None
        return "allow" if self.status == "approved" else "deny"

    @property
    def approvers(self) -> tuple[str, ...]:
        """Who may answer now."""
        panel = self.request.panel
        return panel.approvers + tuple(u for u in panel.escalation if u not in panel.approvers) \
            if self.escalated else panel.approvers


@dataclass(frozen=True)
class ApprovalOutcome:
    verdict: Outcome
    reason: str
    decided_by: str | None = None


class ActionRefused(ValueError):
    """An approve or deny that cannot count: the message says why (shown to the approver, and audited)."""


def workflow_id(tenant: str, call_id: str) -> str:
    """The one workflow per call: a second approval request for the same call is refused by Temporal."""
    return f"approval-{tenant}-{call_id}"


# --- opening an approval ----------------------------------------------------------------------------------

def terms_of(decision: Decision) -> ApprovalTerms:
    """The decision's approval terms; a decision from before terms existed names one group and a quorum."""
    if decision.approval is not None:
        return decision.approval
    groups = (decision.approver_group,) if decision.approver_group else ()
    return ApprovalTerms(groups=groups, quorum=decision.quorum or 1)


def members(users: dict[str, Iterable[str]], *, groups: Iterable[str] = (), roles: Iterable[str] = (),
            names: Iterable[str] = (), group_roles: dict[str, Iterable[str]] | None = None) -> tuple[str, ...]:
    """Users (name -> effective roles) in one of `groups` or holding one of `roles`, or named; sorted, each once.

    A group is an identity-provider group the tenant maps to roles (`group_roles`, the tenants file's
    `groups:`); a group the tenant does not map is the role of the same name.
    """
    mapped = group_roles or {}
    wanted = set(roles) | {role for group in groups for role in mapped.get(group, (group,))}
    chosen = {name for name, held in users.items() if wanted & set(held)}
    chosen |= {name for name in names if name in users}
    return tuple(sorted(chosen))


def panel_for(terms: ApprovalTerms, users: dict[str, Iterable[str]],
              group_roles: dict[str, Iterable[str]] | None = None) -> Panel:
    """Resolve the terms against the requester's tenant (user name -> effective roles, group -> roles)."""
    primary = members(users, groups=terms.groups, roles=terms.roles, names=terms.users, group_roles=group_roles)
    escalation = members(users, groups=terms.escalate_to, group_roles=group_roles)
    return Panel(approvers=primary, escalation=escalation, quorum=terms.quorum, self_approval=terms.self_approval)


def unreachable_quorum(panel: Panel, requester: str) -> str | None:
    """Why nobody could ever approve this call (too few possible approvers), or None."""
    possible = set(panel.approvers) | set(panel.escalation)
    if not panel.self_approval:
        possible.discard(requester)
    if len(possible) >= panel.quorum:
        return None
    who = ", ".join(sorted(possible)) or "nobody"
    return (f"approval needs {panel.quorum} approver(s) but only {len(possible)} may answer ({who}; requesters "
            "do not approve their own calls); denied. Add approvers to the tenant or change the policy's terms")


def request_for(decided: ToolCallDecided, requested: ToolCallRequested, *, panel: Panel, window_s: float,
                conversation: str = "", desk_key: str = "") -> ApprovalRequest:
    """The approval a policy `approve` decision asks for, open for the terms' timeout (else window_s)."""
    decision = decided.decision.decision
    terms = terms_of(decision)
    return ApprovalRequest(
        tenant=decision.tenant, workspace=decision.workspace, session_id=decision.session_id,
        call_id=decision.call_id, tool=decision.tool, digest=decision.digest, reason=decision.reason,
        window_s=terms.timeout_s or window_s, requester=requested.grant.grant.user, args=dict(requested.args),
        panel=panel, groups=terms.groups or terms.roles, escalate_to=terms.escalate_to,
        escalate_after_s=terms.escalate_after_s, remind_every_s=terms.remind_every_s,
        explanation=decision.explanation or decision.reason,
        facts=tuple(Fact(f.name, f.value, f.argument) for f in decision.facts), conversation=conversation,
        policy_ids=decision.policy_ids, desk_key=desk_key, pack_version=decision.pack_version,
    )


def opened(request: ApprovalRequest, now: datetime) -> ApprovalState:
    return ApprovalState(request=request, opened_at=now.isoformat(),
                         expires_at=(now + timedelta(seconds=request.window_s)).isoformat())


# --- answering --------------------------------------------------------------------------------------------

def answer_payload(tenant: str, call_id: str, answer: Answer, action: ApprovalAction) -> dict[str, str]:
    """What the desk signs for one answer: everything that makes it this person's answer to this call."""
    return {"tenant": tenant, "call_id": call_id, "digest": action.digest, "approver": action.approver,
            "answer": answer, "comment": action.comment, "channel": action.channel}


def sign_answer(signer: Signer, tenant: str, call_id: str, answer: Answer, action: ApprovalAction) -> ApprovalAction:
    """The action with the desk's signature (the desk verified the approver's identity first)."""
    return replace(action, signature=signer.sign(answer_payload(tenant, call_id, answer, action)))


def desk_keyring(desk_key_pem: str) -> tuple[Keyring, str]:
    """A keyring trusting only the desk key named in the request, and that key's id."""
    ring = Keyring()
    key_id = ring.trust_pem(DESK_ISSUER, desk_key_pem.encode()) if desk_key_pem else ""
    return ring, key_id


def check_answer(state: ApprovalState, action: ApprovalAction, *, now: datetime) -> None:
    """Raise ActionRefused when this approve/deny, signed by the desk (see `not_from_desk`), cannot count for this
    approval."""
    request = state.request
    if state.status != "pending":
        raise ActionRefused(f"call {request.call_id} has already been decided ({state.status})")
    if now >= datetime.fromisoformat(state.expires_at):
        raise ActionRefused(f"the approval for call {request.call_id} expired at {state.expires_at}")
    if action.digest != request.digest:
        raise ActionRefused(
            f"digest {action.digest[:12]}... is not the digest of call {request.call_id} "
            f"({request.digest[:12]}...): approve exactly the call you reviewed"
        )
    refusal = who_may_not_answer(state.approvers, request.requester, request.panel.self_approval,
                                 [v.approver for v in state.votes], action.approver, request.call_id)
    if refusal:
        raise ActionRefused(refusal)


def not_from_desk(state: ApprovalState, answer: Answer, action: ApprovalAction, desk: tuple[Keyring, str]) -> str | None:
    """Why the answer cannot have come from the approval desk (no valid desk signature), or None when it did.

    Only the desk, after verifying the approver, signs answers: one without its signature was sent to Temporal
    around it, naming whoever the sender liked.
    """
    ring, key_id = desk
    try:
        ring.verify(answer_payload(state.request.tenant, state.request.call_id, answer, action), key_id=key_id,
                    signature=action.signature, issuers={DESK_ISSUER})
    except (SignatureError, ValueError) as exc:
        return (f"the answer for {action.approver!r} is not signed by the approval desk ({exc}): "
                "answer through the approvals UI, CLI or a chat integration")
    return None


def who_may_not_answer(approvers: Iterable[str], requester: str, self_approval: bool, voted: Iterable[str],
                       approver: str, call_id: str) -> str | None:
    """Why `approver` may not answer (not an approver, the requester, already answered), or None."""
    if approver == requester and not self_approval:
        return f"{approver} asked for call {call_id} and may not approve it (separation of duties)"
    if approver not in set(approvers):
        return f"{approver} is not one of the approvers of call {call_id}"
    if approver in set(voted):
        return f"{approver} has already answered call {call_id}"
    return None


def with_answer(state: ApprovalState, answer: Answer, action: ApprovalAction, now: datetime) -> ApprovalState:
    """The state after a counted answer: any deny denies, `quorum` approvals approve, else still pending."""
    votes = state.votes + (Vote(action.approver, answer, action.comment, now.isoformat()),)
    state = replace(state, votes=votes)
    said = f": {action.comment}" if action.comment else ""
    if answer == "deny":
        return replace(state, status="denied", resolution=f"denied by {action.approver}{said}",
                       decided_at=now.isoformat())
    approvals = [v for v in votes if v.answer == "approve"]
    if len(approvals) >= state.request.panel.quorum:
        names = ", ".join(v.approver for v in approvals)
        comments = "; ".join(f"{v.approver}: {v.comment}" for v in approvals if v.comment)
        return replace(state, status="approved", resolution=f"approved by {names}" + (f" ({comments})" if comments else ""),
                       decided_at=now.isoformat())
    return state


def expired(state: ApprovalState, now: datetime) -> ApprovalState:
    return replace(state, status="expired", resolution=EXPIRED_REASON, decided_at=now.isoformat())


def abandoned(state: ApprovalState, how: str, now: datetime) -> ApprovalState:
    """An approval whose workflow was cancelled, terminated or timed out in Temporal: the call is denied."""
    return replace(state, status="denied", decided_at=now.isoformat(),
                   resolution=f"the approval's workflow was {how} in Temporal before it was decided; denied (fail closed)")


def reminder_for(state: ApprovalState) -> tuple[str, ...]:
    """Approvers who have not answered yet (and are not the requester)."""
    voted = {v.approver for v in state.votes}
    return tuple(u for u in state.approvers if u not in voted and u != state.request.requester)


# --- results ----------------------------------------------------------------------------------------------

def unreachable_reason(address: str) -> str:
    return f"approval service cannot reach Temporal at {address}; denied (fail closed)"


def stable_id(*parts: str) -> str:
    """A deterministic event id, so a retried publish of the same result is stored once (Nats-Msg-Id)."""
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:32]


def outcome_of(state: ApprovalState) -> ApprovalOutcome:
    verdict = state.verdict
    assert verdict is not None, "only a decided approval has an outcome"
    deciders = [v.approver for v in state.votes]
    return ApprovalOutcome(verdict, state.resolution, ", ".join(deciders) or None)


def decided_event(request: ApprovalRequest, outcome: ApprovalOutcome, signer: Signer, *, now: datetime,
                  ttl_s: float, event_id: str | None = None) -> ToolCallDecided:
    """The approval's signed verdict on the call: same digest, call and session as the request."""
    ids = {"decision_id": event_id} if event_id else {}
    decision = Decision(
        tenant=request.tenant, workspace=request.workspace, session_id=request.session_id,
        call_id=request.call_id, tool=request.tool, digest=request.digest, verdict=outcome.verdict,
        reason=outcome.reason, policy_ids=request.policy_ids, pack_version=request.pack_version,
        approver_group=request.approver_group, quorum=request.panel.quorum, issued_at=now,
        expires_at=now + timedelta(seconds=ttl_s),
        # What the approvers saw (an MCP tool's definition digest among them: the gateway pins only that one).
        facts=tuple(RiskyFact(name=f.name, value=f.value, argument=f.argument) for f in request.facts),
        **ids,
    )
    return ToolCallDecided(tenant=request.tenant, call_id=request.call_id, workspace=request.workspace,
                           decision=SignedDecision.issue(signer, decision),
                           **({"event_id": event_id} if event_id else {}))


def view_of(state: ApprovalState) -> ApprovalView:
    """The approval as people see it (inbox, detail page, bus events)."""
    request = state.request
    return ApprovalView(
        workflow_id=request.workflow_id, tenant=request.tenant, call_id=request.call_id,
        workspace=request.workspace, session_id=request.session_id, tool=request.tool, args=request.args,
        digest=request.digest, requester=request.requester, reason=request.reason,
        explanation=request.explanation,
        facts=tuple(RiskyFact(name=f.name, value=f.value, argument=f.argument) for f in request.facts),
        conversation=request.conversation, policy_ids=request.policy_ids, groups=request.groups,
        escalate_to=request.escalate_to, approvers=state.approvers, quorum=request.panel.quorum,
        self_approval=request.panel.self_approval,
        votes=tuple(ApprovalVote(approver=v.approver, answer=v.answer, comment=v.comment,
                                 at=datetime.fromisoformat(v.at)) for v in state.votes),
        status=state.status, resolution=state.resolution, escalated=state.escalated,
        opened_at=datetime.fromisoformat(state.opened_at), expires_at=datetime.fromisoformat(state.expires_at),
        decided_at=datetime.fromisoformat(state.decided_at) if state.decided_at else None,
    )


def human_duration(seconds: float) -> str:
    """`15 min`, `2 h 5 min`, `40 s`: how long, for people."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"
