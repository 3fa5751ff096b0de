"""Pure broker logic: what to do with a decided call, and whether an executor may run one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from caduceus_contracts import (
    CanonicalizationError,
    Decision,
    Keyring,
    SignatureError,
    ToolCallDispatched,
    ToolCallRequested,
    call_digest,
)
from caduceus_hermes_plugin.tools import runs_in_planner

Route = Literal["dispatch", "deny", "in-planner", "await-approval", "refuse"]


@dataclass(frozen=True)
class Routing:
    route: Route
    reason: str = ""


def route_decision(request: ToolCallRequested, decision: Decision) -> Routing:
    """Where a decided call goes next. The decision must name this exact call."""
    if decision.call_id != request.call_id or decision.digest != request.digest:
        return Routing("refuse", "the decision names another call (digest or call id differs)")
    if decision.tenant != request.tenant or decision.workspace != request.workspace:
        return Routing("refuse", "the decision is for another tenant or workspace")
    if decision.verdict == "deny":
        return Routing("deny", decision.reason)
    if decision.verdict == "approve":
        return Routing("await-approval", decision.reason)
    if runs_in_planner(request.tool):
        return Routing("in-planner")
    return Routing("dispatch")


class DispatchRefused(Exception):
    """The executor will not run this call; the message says why."""


def check_dispatch(event: ToolCallDispatched, *, tenant: str, workspace: str, keyring: Keyring,
                   now: datetime) -> Decision:
    """Verify a dispatched call before it runs: signed, allow, this exact call, here, unexpired.

    Single use is checked separately against the ledger (it needs storage).
    """
    try:
        decision = event.decision.verify(keyring)
    except SignatureError as exc:
        raise DispatchRefused(f"decision signature rejected: {exc}") from None
    if decision.verdict != "allow":
        raise DispatchRefused(f"the decision is {decision.verdict!r}, not allow")
    if event.tenant != tenant or decision.tenant != tenant:
        raise DispatchRefused(f"the call is for tenant {decision.tenant!r}; this executor serves {tenant!r}")
    if event.workspace != workspace or decision.workspace != workspace:
        raise DispatchRefused(f"the call is for workspace {decision.workspace!r}; this executor serves {workspace!r}")
    if decision.call_id != event.call_id or decision.tool != event.tool or decision.session_id != event.session_id:
        raise DispatchRefused("the decision names another call")
    try:
        digest = call_digest(tenant=tenant, workspace=workspace, session=event.session_id, tool=event.tool,
                             args=event.args)
    except CanonicalizationError as exc:
        raise DispatchRefused(f"the arguments cannot be digested: {exc}") from None
    if digest != decision.digest:
        raise DispatchRefused("the arguments differ from the ones decided (digest mismatch)")
    if now >= decision.expires_at:
        raise DispatchRefused(f"the decision expired at {decision.expires_at.isoformat()}")
    return decision
