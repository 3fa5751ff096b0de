"""Recorded tool calls, read back from the audit trail: who asked for what, and what was decided.

The read model behind "what would another policy have done?" (`caduceus audit replay`,
`caduceus policy diff`): each `tool.requested` record joined with the `tool.decided`
records of the same call, in the order they were stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from caduceus_audit.adapters.store import AuditStore, RecordFilter
from caduceus_audit.domain.narrative import StoredRecord


@dataclass(frozen=True)
class RecordedCall:
    """One requested tool call as the audit trail holds it (arguments already redacted)."""

    tenant: str
    workspace: str
    session_id: str
    call_id: str
    user: str
    roles: tuple[str, ...]
    tool: str
    args: dict[str, Any]
    occurred_at: datetime
    # The last decision recorded for the call (an approval's outcome follows policy's `approve`), if any.
    verdict: str | None = None
    reason: str = ""
    # The rules and pack version of policy's decision (an approval's decision names none).
    policy_ids: tuple[str, ...] = ()
    pack_version: str = ""
    # What policy itself decided, before any approval: what another policy pack is compared with.
    policy_verdict: str | None = None
    policy_reason: str = ""
    # The approval mode identity granted the person (always-ask, ask-when-risky, never), if any.
    approval_mode: str | None = None
    # A model call's upstream as policy routed it (empty for tool calls).
    upstream: str = ""


def recorded_calls(store: AuditStore, *, tenant: str | None = None, since: datetime | None = None,
                   models: bool = False) -> Iterator[RecordedCall]:
    """Every accepted tool request in the store (of one tenant, from `since` on), with its recorded decision.

    With `models`, model calls too: tool `model`, args `{"prompt": ...}` (as stored: secrets redacted), and the
    upstream policy routed them to."""
    requests: dict[str, RecordedCall] = {}
    kinds = ("tool.requested", "tool.decided") + (("model.requested", "model.decided") if models else ())
    for record in store.stream(RecordFilter(tenant=tenant, kinds=kinds)):
        if record.rejected or record.call_id is None:
            continue
        if record.kind in ("tool.requested", "model.requested"):
            call = _requested(record) if record.kind == "tool.requested" else _model_requested(record)
            if since is None or call.occurred_at >= since:
                requests[call.call_id] = call
        elif record.call_id in requests:
            requests[record.call_id] = _with_decision(requests[record.call_id], record)
    yield from requests.values()


def _requested(record: StoredRecord) -> RecordedCall:
    body = json.loads(record.body)
    grant = body["grant"]["grant"]
    return RecordedCall(tenant=record.tenant, workspace=body["workspace"], session_id=body["session_id"],
                        call_id=body["call_id"], user=grant["user"], roles=tuple(grant["roles"]), tool=body["tool"],
                        args=body["args"], occurred_at=record.occurred_at, approval_mode=grant.get("approval_mode"))


def _model_requested(record: StoredRecord) -> RecordedCall:
    body = json.loads(record.body)
    grant = body["grant"]["grant"]
    return RecordedCall(tenant=record.tenant, workspace=body["workspace"], session_id=body["session_id"],
                        call_id=body["call_id"], user=grant["user"], roles=tuple(grant["roles"]), tool="model",
                        args={"prompt": body.get("prompt", "")}, occurred_at=record.occurred_at)


def _with_decision(call: RecordedCall, record: StoredRecord) -> RecordedCall:
    signed = json.loads(record.body)["decision"]
    decision = signed["decision"]
    outcome = {"verdict": decision["verdict"], "reason": decision["reason"]}
    if signed["key_id"].split(":", 1)[0] == "policy":
        outcome.update(policy_ids=tuple(decision["policy_ids"]), pack_version=decision["pack_version"],
                       policy_verdict=decision["verdict"], policy_reason=decision["reason"],
                       upstream=str(decision.get("upstream") or ""))
    return replace(call, **outcome)
