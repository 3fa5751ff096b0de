"""The gateway on the bus: it publishes each model call's request, usage and outcome, and follows decisions.

Every replica sees every decision (no queue group): only the replica waiting for a call's decision
has a future for it, and the others drop it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from caduceus_bus import Route, RouteTable
from caduceus_contracts import ModelCallDecided, subjects


@dataclass
class PendingDecisions:
    """Calls waiting for policy, by call id."""

    futures: dict[str, asyncio.Future[ModelCallDecided]] = field(default_factory=dict)

    def expect(self, call_id: str) -> asyncio.Future[ModelCallDecided]:
        future = asyncio.get_running_loop().create_future()
        self.futures[call_id] = future
        return future

    def forget(self, call_id: str) -> None:
        self.futures.pop(call_id, None)


async def on_model_decided(pending: PendingDecisions, event: ModelCallDecided) -> None:
    """Hand a decision to the call waiting for it (its signature is checked there, against the call)."""
    future = pending.futures.get(event.call_id)
    if future is not None and not future.done():
        future.set_result(event)


ROUTES = RouteTable(
    role="inference",
    routes=(
        # malformed decisions are reported by the audit trail, not by every replica at once
        Route(subjects.MODEL_DECIDED_ALL, ModelCallDecided, on_model_decided, concurrency=16, malformed="ignore"),
    ),
    publishes=(subjects.MODEL_REQUESTED_ALL, subjects.MODEL_USAGE_ALL, subjects.MODEL_COMPLETED_ALL),
    grants=("stream-setup",),
)
