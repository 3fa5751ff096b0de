"""Chat message in, turn request (with a signed session grant) or refusal out; and, for the MCP
endpoint, an access token in, a signed session grant (or why not) answered.

A message identity cannot admit gets a refused chat reply the person sees, and an
audited error event; neither carries the token.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from caduceus_bus import Delivery, EventConnection, Route, RouteTable
from caduceus_contracts import (
    ApprovalRefused,
    ApprovalVouched,
    ApprovalVouchRequested,
    ChatMessageIn,
    ChatReply,
    ErrorEvent,
    GrantAnswer,
    GrantRequested,
    SignedGrant,
    SignedVouch,
    Signer,
    TurnRequested,
    Vouch,
    subjects,
    utcnow,
)
from caduceus_directory import Directory
from caduceus_identity.gatekeeper import Gatekeeper
from caduceus_oidc import Refused
from caduceus_oidc.verifier import UNREACHABLE_REMEDY

log = logging.getLogger(__name__)

REDACTED = "[redacted]"
# Three base64url segments, the first a JSON header ("eyJ"): what a JWT looks like in any text.
_JWT_RE = re.compile(rb"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.?[A-Za-z0-9_-]*")


@dataclass
class Admission:
    """What the chat handler needs: where to publish, who vouches for whom, who exists, how to sign grants."""

    publisher: EventConnection
    gatekeeper: Gatekeeper
    directory: Callable[[], Directory]
    signer: Signer
    grant_ttl: timedelta
    mcp_audience: str = "caduceus-mcp"


def without_token(body: bytes) -> bytes:
    """A message body fit for an error event's excerpt: the token field and anything JWT-shaped removed."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and "token" in data:
        data["token"] = REDACTED
        body = json.dumps(data).encode()
    return _JWT_RE.sub(REDACTED.encode(), body)


async def admit_chat_message(admission: Admission, message: ChatMessageIn, delivery: Delivery) -> None:
    """Verify who sent a chat message; publish TurnRequested with a signed grant, or refuse it."""
    try:
        identity = await admission.gatekeeper.identify(message)
        grant = admission.directory().admit(identity, message, now=utcnow(), ttl=admission.grant_ttl)
    except Refused as refused:
        await refuse_message(message, refused, admission.publisher, delivery)
        return
    signed = SignedGrant.issue(admission.signer, grant)
    turn = TurnRequested(tenant=message.tenant, message_id=message.message_id, grant=signed, text=message.text)
    await admission.publisher.publish(subjects.turn_requested(message.tenant), turn)
    log.info("admitted %s of tenant %s to workspace %s (session %s, grant %s)", grant.user, grant.tenant,
             grant.workspace, grant.session_id, grant.grant_id)


async def refuse_message(message: ChatMessageIn, refused: Refused, publisher: EventConnection,
                         delivery: Delivery) -> None:
    """Tell the person why (a refused chat reply) and audit it (an error event with the reason only)."""
    reply = ChatReply(tenant=message.tenant, message_id=message.message_id, session_id=message.session_id,
                      status="refused", text=refused.reply_text)
    await publisher.publish(subjects.chat_reply(message.tenant, message.session_id), reply)
    await delivery.refuse(refused.reason)


# An answer is counted by the approval desk right after it is vouched for; the vouch is worth nothing later.
VOUCH_TTL = timedelta(seconds=60)


async def vouch_for_answer(admission: Admission, request: ApprovalVouchRequested) -> None:
    """A chat integration's platform user answers an approval: vouch for the person they are linked to, or refuse.

    The approval desk still decides whether that person may answer that call; identity only says who they are.
    """
    try:
        account, user = admission.gatekeeper.vouch(request)
    except Refused as refused:
        log.warning("refused to vouch for %s user %s on call %s: %s", request.platform, request.platform_user,
                    request.call_id, refused.reason)
        await admission.publisher.publish(
            subjects.approval("refused", request.tenant),
            ApprovalRefused(tenant=request.tenant, call_id=request.call_id, approver=f"{request.platform}:"
                            f"{request.platform_user}", answer=request.answer, channel=request.channel,
                            reason=refused.reason[:1000]))
        return
    now = utcnow()
    vouch = Vouch(tenant=request.tenant, user=user, platform=request.platform, platform_user=request.platform_user,
                  vouched_by=account.name, call_id=request.call_id, digest=request.digest, answer=request.answer,
                  comment=request.comment, channel=request.channel, issued_at=now, expires_at=now + VOUCH_TTL)
    await admission.publisher.publish(subjects.approval("vouched", request.tenant),
                                      ApprovalVouched(tenant=request.tenant, call_id=request.call_id,
                                                      vouch=SignedVouch.issue(admission.signer, vouch)))
async def answer_grant_request(admission: Admission, request: GrantRequested, delivery: Delivery) -> None:
    """Answer a client's request (the MCP endpoint's) with the person's signed session grant, or why not.

    The token must carry the audience of the request's purpose (the MCP endpoint's), not the chat audience.
    The grant never outlives the token. A refusal is audited in the tenant's chain, without the token.
    """
    now = utcnow()
    try:
        identity = await admission.gatekeeper.tokens.verify(request.token, request.tenant,
                                                            audience=admission.mcp_audience)
        ttl = admission.grant_ttl
        if identity.expires_at is not None:
            ttl = min(ttl, identity.expires_at - now)
        grant = admission.directory().grant(identity, request.tenant, request.workspace, request.channel,
                                            request.session_id, now=now, ttl=ttl)
        answer = GrantAnswer(grant=SignedGrant.issue(admission.signer, grant))
    except Refused as refused:
        answer = GrantAnswer(refused=refused.reason, remedy=refused.remedy,
                             unavailable=refused.remedy == UNREACHABLE_REMEDY)
        await admission.publisher.publish(
            subjects.error(request.tenant, "identity"),
            ErrorEvent(tenant=request.tenant, service="identity", subject=delivery.subject,
                       reason=f"{request.purpose} access refused: {refused.reason}"))
    if delivery.msg is not None and delivery.msg.reply:
        await delivery.msg.respond(answer.model_dump_json().encode())


# Every message identity handles: each chat message goes to one replica, which admits or refuses it.
ROUTES = RouteTable(
    role="identity",
    routes=(
        Route(subjects.CHAT_IN_ALL, ChatMessageIn, admit_chat_message, queue="identity",
              scrub=without_token),
        # a chat integration asks identity to say who pressed an approval button
        Route(subjects.APPROVAL_VOUCH_ALL, ApprovalVouchRequested, vouch_for_answer, queue="identity",
              scrub=without_token),
        # A request (never stored): the MCP endpoint turns a person's access token into a session grant.
        Route(subjects.IDENTITY_GRANT_ALL, GrantRequested, answer_grant_request, queue="identity", concurrency=16,
              scrub=without_token),
    ),
    publishes=(subjects.TURN_REQUESTED_ALL, subjects.CHAT_REPLY_ALL, subjects.IDENTITY_CHANGED_ALL,
               subjects.APPROVAL_VOUCHED_ALL, subjects.APPROVAL_REFUSED_ALL),
    grants=("stream-setup",),
)
