"""An approval whose workflow ends undecided in Temporal (cancelled or terminated from its Web UI, timed out)
fails closed: the call is denied with a decision signed by approval, the requester is told, the inbox shows it
closed, and the outcome is on the bus for the audit trail."""

from __future__ import annotations

import pytest

from caduceus_approval.domain import workflow_id
from caduceus_contracts import ReloadingKeyring

from .conftest import TENANT, wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("how", ["terminated", "cancelled"])
async def test_an_approval_ended_in_temporal_denies_the_call_and_closes(approval, bus, how: str) -> None:
    asked = approval.ask()
    await asked.publish(bus.conn)
    await bus.approval_event(asked.call_id, "approval.requested")
    temporal = approval.service.temporal.client
    assert temporal is not None
    handle = temporal.get_workflow_handle(workflow_id(TENANT, asked.call_id))
    if how == "terminated":
        await handle.terminate(reason="clicked in the Temporal Web UI")
    else:
        await handle.cancel()

    denied = await bus.verdict_on(asked.call_id, timeout=60)
    decision = denied.decision.verify(ReloadingKeyring(approval.keys_dir), issuers={"approval"})
    assert decision.verdict == "deny" and f"{how} in Temporal" in decision.reason and "fail closed" in decision.reason
    resolved = await bus.approval_event(asked.call_id, "approval.resolved", timeout=30)
    assert resolved.approval.status == "denied"
    told = await bus.notices_for(asked.call_id, 2, timeout=30)
    assert told[1].text.startswith("terminal call denied: the approval's workflow was")
    await wait_until(lambda: approval.service.inbox.get(TENANT, asked.call_id).status == "denied",
                     what="the inbox to show the approval closed")
