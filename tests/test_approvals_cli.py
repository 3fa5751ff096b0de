"""`caduceus approvals` on the embedded stack: an operator lists, inspects and denies a waiting call from the
terminal with the same authorization as the UI, and the requester's turn ends with the denial."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from caduceus.cli import app
from caduceus.commands.demo import APPROVAL_MESSAGE
from caduceus_audit.adapters.store import AuditStore
from caduceus_client import ApprovalsClient, ChatClient
from caduceus_contracts import new_id, utcnow
from caduceus_identity.devtoken import mint_dev_token

pytestmark = pytest.mark.timeout(240)


def stack_decision_bound_s() -> float:
    """How long a planner waits for policy (CADUCEUS_DECISION_TIMEOUT_S, as the broker hands it to workers)."""
    from caduceus_broker.settings import BrokerSettings

    return BrokerSettings.model_fields["decision_timeout_s"].default


def cli(stack, *args: str):
    return CliRunner().invoke(app, ["approvals", *args, "--state-dir", str(stack.layout.root)],
                              env={"COLUMNS": "200"})


async def test_operator_lists_shows_and_denies_a_waiting_call(stack) -> None:
    session_id = f"s-{new_id()[:16]}"
    client = await ChatClient.connect(stack.info.bus_settings("client"))
    turn = asyncio.create_task(client.send(tenant="acme", token=mint_dev_token(stack.info.dev_issuer_url, "acme", "alice"),
                                           text=APPROVAL_MESSAGE, session_id=session_id, timeout=180, watch=True))
    async with ApprovalsClient(stack.info.approval_ui_url,
                               mint_dev_token(stack.info.dev_issuer_url, "acme", "carol")) as api:
        waiting = await api.wait_for(lambda view: view.session_id == session_id, timeout_s=90)

    listed = await asyncio.to_thread(cli, stack, "list", "--user", "carol")
    assert listed.exit_code == 0 and waiting.call_id in listed.output and "alice" in listed.output
    shown = await asyncio.to_thread(cli, stack, "show", waiting.call_id, "--user", "carol")
    assert shown.exit_code == 0 and "rm -rf build" in shown.output and "[risky]" in shown.output
    # Neither may even see it; with the digest in hand, the desk still refuses them, with the reason.
    bob_looks = await asyncio.to_thread(cli, stack, "approve", waiting.call_id, "--user", "bob")
    assert bob_looks.exit_code == 1 and "no approval" in bob_looks.output
    bob = await asyncio.to_thread(cli, stack, "approve", waiting.call_id, "--user", "bob", "--digest", waiting.digest)
    assert bob.exit_code == 1 and "bob is not one of the approvers" in bob.output
    alice = await asyncio.to_thread(cli, stack, "approve", waiting.call_id, "--user", "alice", "--digest",
                                    waiting.digest)
    assert alice.exit_code == 1 and "separation of duties" in alice.output
    # People take longer than policy's decision bound: the planner must still be waiting for them.
    await asyncio.sleep(max(0.0, stack_decision_bound_s() + 1 - (utcnow() - waiting.opened_at).total_seconds()))
    denied = await asyncio.to_thread(cli, stack, "deny", waiting.call_id, "--user", "carol", "--comment", "not now")
    assert denied.exit_code == 0 and "denied: denied by carol: not now" in denied.output

    transcript = await turn
    await client.close()
    call = transcript.calls[waiting.call_id]
    assert call.outcome.status == "denied" and not call.outcome.executed_by
    assert "denied by carol: not now" in call.outcome.reason
    assert [n.text for n in transcript.notices][-1] == "terminal call denied: denied by carol: not now"

    # The refused answers and the approval's whole life are in the tenant's audit trail.
    store = AuditStore(stack.info.audit_db_url)
    async with asyncio.timeout(15):
        while True:
            records = [r for r in store.records(tenant="acme") if r.call_id == waiting.call_id]
            refused = [json.loads(r.body)["reason"] for r in records if r.kind == "approval.refused"]
            if len(refused) >= 2 and any(r.kind == "approval.resolved" for r in records):
                break
            await asyncio.sleep(0.2)
    assert any("bob is not one of the approvers" in r for r in refused)
    assert any("separation of duties" in r for r in refused)
    assert {"approval.requested", "approval.resolved", "tool.decided"} <= {r.kind for r in records}
