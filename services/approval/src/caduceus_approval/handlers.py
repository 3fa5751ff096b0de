"""A policy `approve` decision in; an approval workflow started, or a signed fail-closed deny out."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from temporalio.exceptions import WorkflowAlreadyStartedError

from caduceus_approval.domain import (
    ApprovalOutcome,
    decided_event,
    request_for,
    unreachable_reason,
)
from caduceus_approval.temporal_link import TemporalLink, TemporalUnavailable
from caduceus_bus import EventPublisher
from caduceus_contracts import (
    Keyring,
    SignatureError,
    SignedDecision,
    Signer,
    ToolCallDecided,
    load_keyring,
    subjects,
    utcnow,
)

log = logging.getLogger(__name__)


class PolicyKeys:
    """The keys that may sign `approve` decisions, reloaded from keys_dir when a decision names an unknown key."""

    def __init__(self, keys_dir: Path) -> None:
        self.keys_dir = keys_dir
        self.keyring: Keyring = load_keyring(keys_dir)

    def verify(self, signed: SignedDecision) -> None:
        """Raise SignatureError unless policy signed this decision."""
        if signed.key_id not in self.keyring.keys:
            self.keyring = load_keyring(self.keys_dir)
        signed.verify(self.keyring, frozenset({"policy"}))


@dataclass(frozen=True)
class Approvals:
    """What handling a decision needs: trusted policy keys, the signer, Temporal and the timings."""

    keys: PolicyKeys
    signer: Signer
    temporal: TemporalLink
    window_s: float
    decision_ttl_s: float


async def on_tool_decided(subject: str, body: bytes, publisher: EventPublisher, approvals: Approvals) -> None:
    """Start an approval for a verified `approve`; allow and deny decisions (ours included) pass by."""
    decided = await publisher.receive(subject, body, ToolCallDecided)
    if decided is None or decided.decision.decision.verdict != "approve":
        return
    decision = decided.decision.decision
    try:
        approvals.keys.verify(decided.decision)
    except SignatureError as exc:
        await publisher.refuse(subject, body, f"approve decision for call {decided.call_id} is not from policy: {exc}")
        return
    if (decision.tenant, decision.workspace, decision.call_id) != (decided.tenant, decided.workspace, decided.call_id):
        await publisher.refuse(subject, body, "the signed decision names another tenant, workspace or call "
                                              "than the event carrying it")
        return
    request = request_for(decided, window_s=approvals.window_s)
    try:
        await approvals.temporal.start_approval(request)
        log.info("approval requested for call %s (%s) in %s", request.call_id, request.tool, request.tenant)
        return
    except WorkflowAlreadyStartedError:
        log.info("approval for call %s in %s already requested", request.call_id, request.tenant)
        return
    except TemporalUnavailable:
        outcome = ApprovalOutcome("deny", unreachable_reason(approvals.temporal.address))
    except Exception as exc:
        log.exception("could not start the approval for call %s", request.call_id)
        outcome = ApprovalOutcome("deny", f"approval could not be started ({type(exc).__name__}: {exc}); "
                                          "denied (fail closed)")
    log.warning("call %s in %s denied: %s", request.call_id, request.tenant, outcome.reason)
    await publisher.publish(subjects.tool_decided(request.tenant),
                            decided_event(request, outcome, approvals.signer, now=utcnow(),
                                          ttl_s=approvals.decision_ttl_s))
