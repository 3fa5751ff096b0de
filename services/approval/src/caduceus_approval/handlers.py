"""Bus handlers: a policy `approve` decision opens an approval (or is denied, failing closed); call requests
and turns are remembered for the approval's page; approval events keep the inbox current; answers from
chat integrations go to the desk."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import Counter
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
from caduceus_approval.inbox import Inbox, Person
from caduceus_approval.temporal_link import TemporalLink, TemporalUnavailable
from caduceus_bus import Delivery, Publisher, Route, RouteTable
from caduceus_contracts import (
    ApprovalAnswered,
    ApprovalEscalated,
    ApprovalReminded,
    ApprovalRequested,
    ApprovalResolved,
    ApprovalVoted,
    ApprovalVouched,
    Event,
    ReloadingKeyring,
    SignatureError,
    Signer,
    ToolCallDecided,
    ToolCallRequested,
    TurnRequested,
    VouchExpired,
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


@dataclass(frozen=True)
class ApprovalDeps:
    """What the approval service's routes need."""

    publisher: Publisher
    approvals: Approvals
    calls: RecentCalls
    inbox: Inbox
    desk: ApprovalDesk
    directory: TenantDirectory
    verifier: OidcVerifier | None


async def remember_request(deps: ApprovalDeps, request: ToolCallRequested) -> None:
    """Remember a call request (only one whose grant verifies); policy and audit report bad ones."""
    await deps.calls.remember_request(request)


async def remember_turn(deps: ApprovalDeps, turn: TurnRequested) -> None:
    deps.calls.remember_turn(turn)


RESOLVED = Counter("caduceus_approvals_resolved_total", "Approvals closed, by outcome (approved, denied, expired)",
                   ["status"])


async def follow_approval(deps: ApprovalDeps, event: Event) -> None:
    """Keep this replica's inbox current, whichever replica's worker runs the approval."""
    if isinstance(event, _VIEW_EVENTS):
        deps.inbox.apply(event.approval)
    if isinstance(event, ApprovalResolved):
        RESOLVED.labels(event.approval.status).inc()


async def open_approval(deps: ApprovalDeps, decided: ToolCallDecided, delivery: Delivery) -> None:
    """Open an approval for a verified `approve`; allow and deny decisions (ours included) pass by."""
    if decided.decision.decision.verdict != "approve":
        return
    approvals, publisher = deps.approvals, deps.publisher
    decision = decided.decision.decision
    try:
        decided.decision.verify(approvals.keys, issuers={"policy"})
    except SignatureError as exc:
        await delivery.refuse(f"approve decision for call {decided.call_id} is not from policy: {exc}")
        return
    if (decision.tenant, decision.workspace, decision.call_id) != (decided.tenant, decided.workspace, decided.call_id):
        await delivery.refuse("the signed decision names another tenant, workspace or call than the event carrying it")
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


async def answer_from_chat(deps: ApprovalDeps, answered: ApprovalAnswered, delivery: Delivery) -> None:
    """An answer from a chat integration: verify the person's token, then count it like any other."""
    verifier, directory, desk = deps.verifier, deps.directory, deps.desk
    if verifier is None:
        await delivery.refuse("approval answers from chat need CADUCEUS_OIDC_ISSUER_URL to verify people")
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


async def answer_vouched(deps: ApprovalDeps, vouched: ApprovalVouched) -> None:
    """An answer identity vouches for (a chat platform user linked to a person): count it like any other.

    Only identity's signature, unexpired, makes the person who they are; the desk then checks that they
    are an approver of this exact call (its digest), as for every answer.
    """
    desk = deps.desk
    claimed = vouched.vouch.vouch
    try:
        vouch = vouched.vouch.verify(deps.approvals.keys, issuers={"identity"})
    except (SignatureError, VouchExpired) as exc:
        await desk.refuse(Person(vouched.tenant, "(unverified)"), vouched.call_id, claimed.answer, claimed.channel,
                          f"the vouch for this answer is not valid: {exc}")
        return
    person = Person(vouch.tenant, vouch.user)
    if not deps.directory.is_member(vouch.tenant, vouch.user):
        await desk.refuse(person, vouch.call_id, vouch.answer, vouch.channel,
                          f"{vouch.user} is not a user of tenant {vouch.tenant}")
        return
    try:
        await desk.answer(person, vouch.call_id, vouch.answer, digest=vouch.digest, comment=vouch.comment,
                          channel=vouch.channel)
    except AnswerRefused:
        pass  # already audited as ApprovalRefused


_VIEW_EVENTS = (ApprovalRequested, ApprovalVoted, ApprovalEscalated, ApprovalReminded, ApprovalResolved)

# Every message the approval service handles. Every replica remembers every request and turn (the decision
# may reach any of them) and follows every approval (whichever replica's worker runs it); each decision and
# each answer goes to one replica.
ROUTES = RouteTable(
    role="approval",
    routes=(
        # several at once: opening one approval may wait a moment for its request to arrive
        Route(subjects.TOOL_DECIDED_ALL, ToolCallDecided, open_approval, queue="approval", concurrency=16,
              malformed="ignore"),  # the broker reports a malformed decision
        # who asked, with which arguments, in which conversation: shown to approvers
        Route(subjects.TOOL_REQUESTED_ALL, ToolCallRequested, remember_request, malformed="ignore"),
        Route(subjects.TURN_REQUESTED_ALL, TurnRequested, remember_turn, malformed="ignore"),
        Route(subjects.APPROVAL_ALL, None, follow_approval, malformed="ignore"),  # the audit trail keeps bad ones
        Route(subjects.APPROVAL_ANSWERED_ALL, ApprovalAnswered, answer_from_chat, queue="approval", concurrency=8),
        Route(subjects.APPROVAL_VOUCHED_ALL, ApprovalVouched, answer_vouched, queue="approval", concurrency=8),
    ),
    publishes=(subjects.TOOL_DECIDED_ALL, subjects.APPROVAL_EVENTS, subjects.CHAT_NOTICE_ALL,
               subjects.AUDIT_USAGE_ALL),  # asks audit for a tenant's model usage (request/reply, the usage page)
    grants=("stream-setup",),
)
