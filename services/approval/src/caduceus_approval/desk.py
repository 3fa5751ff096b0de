"""The approval desk: where a verified person's approve or deny comes in, from the web UI, the CLI's API or
a chat integration. Authorization is checked here and again in the workflow's update validator; every
answer that does not count is published as ApprovalRefused, so audit keeps it."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from temporalio.client import RPCTimeoutOrCancelledError, WorkflowUpdateFailedError
from temporalio.service import RPCError

from caduceus_approval.domain import (
    Answer,
    ApprovalAction,
    sign_answer,
    view_of,
    who_may_not_answer,
)
from caduceus_approval.inbox import Inbox, Person
from caduceus_approval.temporal_link import TemporalLink, TemporalUnavailable
from caduceus_contracts import ApprovalRefused, ApprovalView, Event, Signer, subjects

log = logging.getLogger(__name__)
Publish = Callable[[str, Event], Awaitable[None]]


class AnswerRefused(Exception):
    """The answer did not count; the message says why (and it was audited)."""


class ApprovalDesk:
    def __init__(self, inbox: Inbox, temporal: TemporalLink, signer: Signer, publish: Publish) -> None:
        self.inbox = inbox
        self.temporal = temporal
        self.signer = signer
        self.publish = publish

    async def answer(self, person: Person, call_id: str, verdict: Answer, *, digest: str, comment: str = "",
                     channel: str = "web") -> ApprovalView:
        """Count `person`'s answer on the call, or raise AnswerRefused saying why not."""
        view = self.inbox.get(person.tenant, call_id)
        if view is None:
            reason = f"there is no approval for call {call_id} in tenant {person.tenant}"
        elif view.status != "pending":
            reason = f"call {call_id} has already been decided ({view.status})"
        else:
            reason = who_may_not_answer(view.approvers, view.requester, view.self_approval,
                                        [v.approver for v in view.votes], person.user, call_id)
        if reason is None:
            action = sign_answer(self.signer, person.tenant, call_id, verdict,
                                 ApprovalAction(digest, person.user, comment, channel))
            try:
                state = await self.temporal.answer(person.tenant, call_id, verdict, action)
            except WorkflowUpdateFailedError as exc:
                reason = getattr(exc.cause, "message", None) or str(exc)
            except (TemporalUnavailable, RPCTimeoutOrCancelledError):
                reason = f"the approval service cannot reach Temporal at {self.temporal.address}; try again shortly"
            except RPCError as exc:
                reason = f"the approval for call {call_id} is closed ({exc.message})"
            except Exception as exc:  # a bug must still answer the person, and be audited
                log.exception("answer on call %s failed", call_id)
                reason = f"the answer could not be delivered ({type(exc).__name__}); try again"
            else:
                decided = view_of(state)
                self.inbox.apply(decided)
                log.info("%s@%s answered %s on call %s: %s", person.user, person.tenant, verdict, call_id,
                         decided.status)
                return decided
        await self.refuse(person, call_id, verdict, channel, reason)
        raise AnswerRefused(reason)

    async def refuse(self, person: Person, call_id: str, verdict: str, channel: str, reason: str) -> None:
        """Audit an answer that did not count."""
        log.warning("answer %s on call %s by %s@%s refused: %s", verdict, call_id, person.user, person.tenant, reason)
        await self.publish(subjects.approval("refused", person.tenant),
                           ApprovalRefused(tenant=person.tenant, call_id=call_id[:256], approver=person.user,
                                           answer=verdict[:32], channel=channel, reason=reason[:1000]))
