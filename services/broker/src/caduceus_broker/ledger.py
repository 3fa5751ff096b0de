"""The ledger of decisions already used: each decision authorizes one execution, ever.

It lives in a JetStream key-value bucket (`caduceus_used_decisions`), not in the executor's home: tool calls run
as the executor's user and can rewrite anything in that home, so a ledger kept there could be emptied by a tool
and a decision used again. The bucket is reached only with the executor's bus credential, which the executor
takes (and removes from its home) before any tool runs. A key is written once: claiming is a write that
JetStream accepts only if the key's subject was never written (expected last subject sequence 0), so the first
use wins, on any executor of any replica of the broker, and even a delete marker cannot reopen a key.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from caduceus_bus import (
    CLAIM_WAIT_S,
    USED_DECISIONS_BUCKET,
    CallClaims,
    ClaimUnknown,
    ensure_used_decisions,
    through_elections,
    write_once,
)


async def create_ledger(js: JetStreamContext, replicas: int) -> None:
    """Create the bucket of used decisions and calls (caduceus_bus.claims) if it is not there, through a cluster's
    election: executors, the MCP gateway and planners write to it, and none of them may create it."""
    await through_elections(lambda: ensure_used_decisions(js, replicas=replicas), CLAIM_WAIT_S,
                            "the creation of the bucket of used decisions")


class LedgerUnavailable(Exception):
    """The ledger could not say whether a decision was used: the call must not run."""


def used_decision_key(tenant: str, workspace: str, decision_id: str) -> str:
    return f"{tenant}.{workspace}.{decision_id}"


class DecisionLedger:
    """One executor's view of the bucket: its own tenant and workspace's keys (its credential allows no others)."""

    def __init__(self, kv: KeyValue, tenant: str, workspace: str, calls: CallClaims) -> None:
        self.kv = kv
        self.tenant = tenant
        self.workspace = workspace
        self.calls = calls

    @classmethod
    async def open(cls, js: JetStreamContext, tenant: str, workspace: str) -> "DecisionLedger":
        """Bind the bucket the broker created. Raises LedgerUnavailable when it is not there."""
        try:
            kv = await js.key_value(USED_DECISIONS_BUCKET)
            return cls(kv, tenant, workspace, CallClaims(js, kv=kv))
        except Exception as exc:
            raise LedgerUnavailable(f"the bucket {USED_DECISIONS_BUCKET} of used decisions cannot be read "
                                    f"({type(exc).__name__}: {exc})") from None

    async def claim(self, decision_id: str, call_id: str) -> bool:
        """Mark a decision used; False if it was used before (a replay). Raises LedgerUnavailable.

        On a cluster electing the bucket's leader the write is tried again for a while. A write that was stored
        but not confirmed then meets its own key and is refused like a replay: the call does not run, and its
        requester is told so (never a run after a refusal, never a second run)."""
        key = used_decision_key(self.tenant, self.workspace, decision_id)
        try:
            return await write_once(self.kv, key, call_id.encode(), f"the claim of decision {decision_id}")
        except ClaimUnknown as exc:
            raise LedgerUnavailable(f"the ledger of used decisions did not answer ({exc})") from None

    async def take_call(self, call_id: str, decision_id: str) -> bool:
        """Take the call itself (claims.py): False when it ran before or its requester closed it, having stopped
        waiting for a decision (it was told the call was denied). Raises LedgerUnavailable."""
        try:
            return await self.calls.take(self.tenant, self.workspace, call_id, decision_id)
        except ClaimUnknown as exc:
            raise LedgerUnavailable(f"the ledger of used decisions did not answer ({exc})") from None
