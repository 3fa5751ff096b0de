"""The approvals people see: every approval's latest view, who may see it, and live change notices.

Fed by the approval events on the bus (from any replica's workflows) and rebuilt from Temporal
when the service connects; Temporal stays the source of truth, this is what the UI reads.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from caduceus_contracts import ApprovalView


@dataclass(frozen=True)
class Person:
    """A verified approver: the tenant they belong to and their user name there."""

    tenant: str
    user: str


def _progress(view: ApprovalView) -> tuple[bool, int, bool]:
    # Events can arrive out of order (retries, replicas): never let an older step overwrite a later one.
    return view.status != "pending", len(view.votes), view.escalated


def visible_to(view: ApprovalView, person: Person) -> bool:
    """Only the approval's own tenant, and only people on its panel (or who answered it), ever see it."""
    return view.tenant == person.tenant and (person.user in view.approvers
                                             or any(v.approver == person.user for v in view.votes))


class Inbox:
    def __init__(self) -> None:
        self._views: dict[tuple[str, str], ApprovalView] = {}
        self._listeners: set[asyncio.Queue[ApprovalView]] = set()

    def apply(self, view: ApprovalView) -> None:
        """Take a newer view of an approval and tell the listeners."""
        key = (view.tenant, view.call_id)
        known = self._views.get(key)
        if known is not None and _progress(known) > _progress(view):
            return
        self._views[key] = view
        for queue in self._listeners:
            with contextlib.suppress(asyncio.QueueFull):  # a stalled page refetches on the next change anyway
                queue.put_nowait(view)

    def open_count(self) -> int:
        """How many approvals are waiting for people."""
        return sum(1 for view in self._views.values() if view.status == "pending")

    def get(self, tenant: str, call_id: str) -> ApprovalView | None:
        return self._views.get((tenant, call_id))

    def pending_for(self, person: Person) -> list[ApprovalView]:
        """What waits for this person, soonest expiry first."""
        return sorted((v for v in self._views.values() if v.status == "pending" and visible_to(v, person)),
                      key=lambda v: v.expires_at)

    def history_for(self, person: Person, limit: int = 50) -> list[ApprovalView]:
        """Decided approvals this person could answer, latest first."""
        decided = [v for v in self._views.values() if v.status != "pending" and visible_to(v, person)]
        return sorted(decided, key=lambda v: v.decided_at or v.expires_at, reverse=True)[:limit]

    @contextlib.contextmanager
    def listen(self) -> Iterator[asyncio.Queue[ApprovalView]]:
        """A queue receiving every view applied while the context is open."""
        queue: asyncio.Queue[ApprovalView] = asyncio.Queue(maxsize=1000)
        self._listeners.add(queue)
        try:
            yield queue
        finally:
            self._listeners.discard(queue)
