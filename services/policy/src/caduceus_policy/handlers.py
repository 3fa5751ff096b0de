"""Deciding tool calls: a ToolCallRequested in, a signed ToolCallDecided out.

The grant is checked before anything else and is the only source of roles; the call's
digest must be the digest of its own arguments; any failure, including a bug, is a
signed deny with the reason, never a crash and never an allow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path, PurePosixPath

from caduceus_bus import EventPublisher
from caduceus_contracts import (
    CanonicalizationError,
    Decision,
    GrantExpired,
    SignatureError,
    SignedDecision,
    Signer,
    ToolCallDecided,
    ToolCallRequested,
    subjects,
    utcnow,
)
from caduceus_policy.domain import PolicyEngine, Verdict
from caduceus_policy.facts import request_facts
from caduceus_policy.keys import TrustedKeys

log = logging.getLogger(__name__)


def workspace_root(workspaces_dir: Path, tenant: str, workspace: str) -> PurePosixPath:
    """`<workspaces_dir>/<tenant>/<workspace>`: the directory the executor runs the call in."""
    return PurePosixPath(workspaces_dir.absolute()) / tenant / workspace


@dataclass(frozen=True)
class Decider:
    """Everything a decision needs: the rule engine, trusted keys, the policy signing key, the layout."""

    engine: PolicyEngine
    keys: TrustedKeys
    signer: Signer
    workspaces_dir: Path
    decision_ttl_s: float = 60.0

    def verdict_for(self, request: ToolCallRequested) -> Verdict:
        """Check the grant and the digest, then ask the engine; every failure is a deny saying why."""
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
        root = workspace_root(self.workspaces_dir, request.tenant, request.workspace)
        return self.engine.decide(request_facts(request.tenant, grant.roles, request.tool, request.args, root))

    def decide(self, request: ToolCallRequested) -> ToolCallDecided:
        """The signed decision event for one request (fail closed: an exception becomes a deny)."""
        try:
            verdict = self.verdict_for(request)
        except Exception as exc:
            log.exception("policy evaluation failed for call %s", request.call_id)
            verdict = Verdict("deny", f"policy evaluation failed: {type(exc).__name__}: {exc}")
        now = utcnow()
        decision = Decision(
            tenant=request.tenant,
            workspace=request.workspace,
            session_id=request.session_id,
            call_id=request.call_id,
            tool=request.tool,
            digest=request.digest,
            verdict=verdict.verdict,
            reason=verdict.reason,
            policy_ids=verdict.policy_ids,
            pack_version=self.engine.version,
            **_approval_fields(verdict),
            issued_at=now,
            expires_at=now + timedelta(seconds=self.decision_ttl_s),
        )
        return ToolCallDecided(
            tenant=request.tenant,
            call_id=request.call_id,
            workspace=request.workspace,
            decision=SignedDecision.issue(self.signer, decision),
        )


def _approval_fields(verdict: Verdict) -> dict:
    """What an approve decision tells the approval service: the terms, the explanation and the risky facts."""
    if verdict.verdict != "approve" or verdict.approval is None:
        return {}
    terms = verdict.approval
    group = (terms.groups or terms.roles or (None,))[0]
    return {"approval": terms, "approver_group": group, "quorum": terms.quorum, "facts": verdict.facts,
            "explanation": f"{verdict.reason} (rule {', '.join(verdict.policy_ids)})"}


async def on_tool_requested(subject: str, body: bytes, publisher: EventPublisher, decider: Decider) -> None:
    """Parse one request (refusing bad input with an error event), decide it, publish the decision."""
    request = await publisher.receive(subject, body, ToolCallRequested)
    if request is None:
        return
    decided = decider.decide(request)
    log.info("call %s (%s) in %s: %s", request.call_id, request.tool, request.tenant, decided.decision.decision.verdict)
    await publisher.publish(subjects.tool_decided(request.tenant), decided)
