"""Approvals without I/O: what an approval is about, what a person does, what comes out, and the signed result.

An approval is bound to one call digest: a person approves or denies *that* call, and
nothing else; no answer before the expiry means deny.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from caduceus_contracts import Decision, SignedDecision, Signer, ToolCallDecided

Outcome = Literal["allow", "deny"]
EXPIRED_REASON = "approval expired"


@dataclass(frozen=True)
class ApprovalRequest:
    """One call waiting for a person: the workflow's input (Temporal serializes it as JSON)."""

    tenant: str
    workspace: str
    session_id: str
    call_id: str
    tool: str
    digest: str
    reason: str
    # The window opens when the workflow starts (Temporal's clock), so the service's clock does not matter.
    window_s: float
    approver_group: str | None = None
    quorum: int | None = None

    @property
    def workflow_id(self) -> str:
        return workflow_id(self.tenant, self.call_id)


@dataclass(frozen=True)
class ApprovalAction:
    """What an approver sends: which call (by digest) they looked at, who they are, and why."""

    digest: str
    approver: str
    comment: str = ""


@dataclass(frozen=True)
class ApprovalOutcome:
    verdict: Outcome
    reason: str
    decided_by: str | None = None


class ActionRefused(ValueError):
    """An approve or deny that cannot count: the message says why (shown to the approver)."""


def workflow_id(tenant: str, call_id: str) -> str:
    """The one workflow per call: a second approval request for the same call is refused by Temporal."""
    return f"approval-{tenant}-{call_id}"


def request_for(decided: ToolCallDecided, *, window_s: float) -> ApprovalRequest:
    """The approval a policy `approve` decision asks for, open for window_s once started."""
    decision = decided.decision.decision
    return ApprovalRequest(
        tenant=decision.tenant, workspace=decision.workspace, session_id=decision.session_id,
        call_id=decision.call_id, tool=decision.tool, digest=decision.digest, reason=decision.reason,
        window_s=window_s, approver_group=decision.approver_group,
        quorum=decision.quorum,
    )


def check_action(request: ApprovalRequest, action: ApprovalAction, *, now: datetime, expires_at: datetime,
                 decided: bool) -> None:
    """Raise ActionRefused when this approve/deny cannot count for this request."""
    if decided:
        raise ActionRefused(f"call {request.call_id} has already been decided")
    if action.digest != request.digest:
        raise ActionRefused(
            f"digest {action.digest[:12]}... is not the digest of call {request.call_id} "
            f"({request.digest[:12]}...): approve exactly the call you reviewed"
        )
    if now >= expires_at:
        raise ActionRefused(f"the approval for call {request.call_id} expired at {expires_at.isoformat()}")
    if not action.approver.strip():
        raise ActionRefused("an approval must name the approver")


def outcome_of(verdict: Outcome, action: ApprovalAction) -> ApprovalOutcome:
    said = "approved" if verdict == "allow" else "denied"
    reason = f"{said} by {action.approver}" + (f": {action.comment}" if action.comment else "")
    return ApprovalOutcome(verdict=verdict, reason=reason, decided_by=action.approver)


def expired() -> ApprovalOutcome:
    return ApprovalOutcome(verdict="deny", reason=EXPIRED_REASON)


def unreachable_reason(address: str) -> str:
    return f"approval service cannot reach Temporal at {address}; denied (fail closed)"


def stable_id(*parts: str) -> str:
    """A deterministic event id, so a retried publish of the same result is stored once (Nats-Msg-Id)."""
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:32]


def decided_event(request: ApprovalRequest, outcome: ApprovalOutcome, signer: Signer, *, now: datetime,
                  ttl_s: float, event_id: str | None = None) -> ToolCallDecided:
    """The approval's signed verdict on the call: same digest, call and session as the request."""
    ids = {"decision_id": event_id} if event_id else {}
    decision = Decision(
        tenant=request.tenant, workspace=request.workspace, session_id=request.session_id,
        call_id=request.call_id, tool=request.tool, digest=request.digest, verdict=outcome.verdict,
        reason=outcome.reason, approver_group=request.approver_group, quorum=request.quorum,
        issued_at=now, expires_at=now + timedelta(seconds=ttl_s),
        **ids,
    )
    return ToolCallDecided(tenant=request.tenant, call_id=request.call_id, workspace=request.workspace,
                           decision=SignedDecision.issue(signer, decision),
                           **({"event_id": event_id} if event_id else {}))
