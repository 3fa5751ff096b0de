"""Bus handlers: a policy `approve` decision opens an approval (or is denied, failing closed); call requests
and turns are remembered for the approval's page; approval events keep the inbox current; answers from
chat integrations go to the desk."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from temporalio.exceptions import WorkflowAlreadyStartedError

from caduceus_approval.calls import RecentCalls
from caduceus_approval.desk import AnswerRefused, ApprovalDesk
from caduceus_approval.directory import TenantDirectory
from caduceus_approval.domain import (
    ApprovalOutcome,
    ApprovalRequest,
    decided_event,
    panel_for,
    request_for,
    terms_of,
    unreachable_quorum,
    unreachable_reason,
)
from caduceus_approval.inbox import Person
from caduceus_approval.temporal_link import TemporalLink, TemporalUnavailable
from caduceus_bus import EventPublisher
from caduceus_contracts import (
    ApprovalAnswered,
    ContractError,
    ReloadingKeyring,
    SignatureError,
    Signer,
    ToolCallDecided,
    ToolCallRequested,
    TurnRequested,
    parse_event,
    subjects,
    utcnow,
)
from caduceus_directory import DirectoryError
from caduceus_oidc import OidcVerifier, TokenRefused

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Approvals:
    """What opening an approval needs: trusted policy keys, the signer, Temporal, the directory and the timings."""

    keys: ReloadingKeyring  # policy's key signs the `approve` decisions
    signer: Signer
    temporal: TemporalLink
    calls: RecentCalls
    directory: TenantDirectory
    desk_key: str
    window_s: float
    decision_ttl_s: float
    request_wait_s: float


async def on_tool_requested(subject: str, body: bytes, calls: RecentCalls) -> None:
    """Remember a call request (only one whose grant verifies); policy and audit report bad ones."""
    try:
        request = parse_event(body, expect=ToolCallRequested, subject=subject)
    except ContractError:
        return
    await calls.remember_request(request)


async def on_turn_requested(subject: str, body: bytes, calls: RecentCalls) -> None:
    try:
        turn = parse_event(body, expect=TurnRequested, subject=subject)
    except ContractError:
        return
    calls.remember_turn(turn)


async def on_tool_decided(subject: str, body: bytes, publisher: EventPublisher, approvals: Approvals) -> None:
    """Open an approval for a verified `approve`; allow and deny decisions (ours included) pass by."""
    decided = await publisher.receive(subject, body, ToolCallDecided)
    if decided is None or decided.decision.decision.verdict != "approve":
        return
    decision = decided.decision.decision
    try:
        decided.decision.verify(approvals.keys, issuers={"policy"})
    except SignatureError as exc:
        await publisher.refuse(subject, body, f"approve decision for call {decided.call_id} is not from policy: {exc}")
        return
    if (decision.tenant, decision.workspace, decision.call_id) != (decided.tenant, decided.workspace, decided.call_id):
        await publisher.refuse(subject, body, "the signed decision names another tenant, workspace or call "
                                              "than the event carrying it")
        return
    request, denial = await _approval_for(decided, approvals)
    if request is not None:
        try:
            await approvals.temporal.start_approval(request)
            log.info("approval requested for call %s (%s) in %s", request.call_id, request.tool, request.tenant)
            return
        except WorkflowAlreadyStartedError:
            log.info("approval for call %s in %s already requested", request.call_id, request.tenant)
            return
        except TemporalUnavailable:
            denial = unreachable_reason(approvals.temporal.address)
        except Exception as exc:
            log.exception("could not start the approval for call %s", decision.call_id)
            denial = f"approval could not be started ({type(exc).__name__}: {exc}); denied (fail closed)"
    log.warning("call %s in %s denied: %s", decision.call_id, decision.tenant, denial)
    # The request as far as it is known, so the signed deny names the exact call.
    named = ApprovalRequest(tenant=decision.tenant, workspace=decision.workspace, session_id=decision.session_id,
                            call_id=decision.call_id, tool=decision.tool, digest=decision.digest,
                            reason=decision.reason, window_s=0, policy_ids=decision.policy_ids)
    await publisher.publish(subjects.tool_decided(decision.tenant),
                            decided_event(named, ApprovalOutcome("deny", denial), approvals.signer, now=utcnow(),
                                          ttl_s=approvals.decision_ttl_s))


async def _approval_for(decided: ToolCallDecided, approvals: Approvals) -> tuple[ApprovalRequest | None, str]:
    """The approval to open, or why none can be (a deny reason)."""
    decision = decided.decision.decision
    requested = await approvals.calls.request(decision.call_id, approvals.request_wait_s)
    if requested is None:
        return None, (f"the approval service did not see call {decision.call_id}'s request with a valid session "
                      "grant; denied (fail closed)")
    if (requested.digest, requested.session_id, requested.tool) != (decision.digest, decision.session_id, decision.tool):
        return None, "the decision does not match the call's request (digest, session or tool); denied"
    try:
        people = approvals.directory.people(decision.tenant)
    except DirectoryError as exc:
        return None, f"the approval service cannot read the tenants file: {exc}; denied (fail closed)"
    if people is None:
        return None, f"tenant {decision.tenant!r} is not in the tenants file, so it has no approvers; denied"
    panel = panel_for(terms_of(decision), people.users, people.groups)
    impossible = unreachable_quorum(panel, requested.grant.grant.user)
    if impossible:
        return None, impossible
    return request_for(decided, requested, panel=panel, window_s=approvals.window_s,
                       conversation=approvals.calls.conversation(decision.session_id),
                       desk_key=approvals.desk_key), ""


async def on_approval_answered(subject: str, body: bytes, publisher: EventPublisher, verifier: OidcVerifier,
                               directory: TenantDirectory, desk: ApprovalDesk) -> None:
    """An answer from a chat integration: verify the person's token, then count it like any other."""
    answered = await publisher.receive(subject, body, ApprovalAnswered)
    if answered is None:
        return
    try:
        identity = await verifier.verify(answered.token)
    except TokenRefused as exc:
        await desk.refuse(Person(answered.tenant, "(unverified)"), answered.call_id, answered.answer,
                          answered.channel, f"the approver's token was refused: {exc.reason}")
        return
    person = Person(answered.tenant, identity.subject)
    if identity.tenant != answered.tenant or not directory.is_member(answered.tenant, identity.subject):
        await desk.refuse(person, answered.call_id, answered.answer, answered.channel,
                          f"{identity.subject}@{identity.tenant} is not a user of tenant {answered.tenant}")
        return
    try:
        await desk.answer(person, answered.call_id, answered.answer, digest=answered.digest,
                          comment=answered.comment, channel=answered.channel)
    except AnswerRefused:
        pass  # already audited as ApprovalRefused
