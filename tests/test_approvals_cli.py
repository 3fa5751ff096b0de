"""`caduceus approvals` on the embedded stack: an operator lists, inspects and denies a waiting call from the
terminal with the same authorization as the UI, and the requester's turn ends with the denial; `show` gives the
whole digest `approve --digest` takes; the stack's other commands answer --json and hint with the state dir."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from typer.testing import CliRunner

from caduceus.cli import app
from caduceus.commands.demo import APPROVAL_MESSAGE
from caduceus_audit.adapters.store import AuditStore
from caduceus_client import ApprovalsClient, ChatClient
from caduceus_contracts import ApprovalView, new_id, utcnow
from caduceus_identity.devtoken import mint_dev_token

pytestmark = pytest.mark.timeout(240)


def stack_decision_bound_s() -> float:
    """How long a planner waits for policy (CADUCEUS_DECISION_TIMEOUT_S, as the broker hands it to workers)."""
    from caduceus_broker.settings import BrokerSettings

    return BrokerSettings.model_fields["decision_timeout_s"].default


def cli(stack, *args: str):
    return CliRunner().invoke(app, ["approvals", *args, "--state-dir", str(stack.layout.root)],
                              env={"COLUMNS": "200"})


async def a_call_waiting_for_carol(stack) -> tuple[ChatClient, asyncio.Task, ApprovalView]:
    """alice's cleanup turn, under way, and its `rm` waiting for carol's approval."""
    session_id = f"s-{new_id()[:16]}"
    client = await ChatClient.connect(stack.info.bus_settings("client"))
    turn = asyncio.create_task(client.send(tenant="acme", token=mint_dev_token(stack.info.dev_issuer_url, "acme", "alice"),
                                           text=APPROVAL_MESSAGE, session_id=session_id, timeout=180, watch=True))
    async with ApprovalsClient(stack.info.approval_ui_url,
                               mint_dev_token(stack.info.dev_issuer_url, "acme", "carol")) as api:
        return client, turn, await api.wait_for(lambda view: view.session_id == session_id, timeout_s=90)


async def test_operator_lists_shows_and_denies_a_waiting_call(stack) -> None:
    client, turn, waiting = await a_call_waiting_for_carol(stack)

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


async def test_show_prints_the_whole_digest_and_approve_takes_it(stack) -> None:
    client, turn, waiting = await a_call_waiting_for_carol(stack)

    root = stack.layout.root
    # A narrow terminal: the digest is still whole, on one line, and so is the command that answers it.
    narrow = await asyncio.to_thread(CliRunner().invoke, app, ["approvals", "show", waiting.call_id, "--user", "carol",
                                                               "--state-dir", str(root)], env={"COLUMNS": "60"})
    assert narrow.exit_code == 0, narrow.output
    (digest,) = [line.split()[-1] for line in narrow.stdout.splitlines() if line.startswith("digest")]
    assert re.fullmatch(r"[0-9a-f]{64}", digest) and digest == waiting.digest
    assert (f"answer exactly this call: caduceus approvals approve --state-dir {root} --digest {digest} {waiting.call_id}"
            in narrow.stdout.splitlines())
    listed = json.loads((await asyncio.to_thread(cli, stack, "list", "--user", "carol", "--json")).stdout)
    assert waiting.call_id in [view["call_id"] for view in listed]
    narrow_list = await asyncio.to_thread(CliRunner().invoke, app, ["approvals", "list", "--user", "carol",
                                                                    "--state-dir", str(root)], env={"COLUMNS": "60"})
    assert waiting.call_id in narrow_list.stdout  # whole: the other columns give way
    shown = json.loads((await asyncio.to_thread(cli, stack, "show", waiting.call_id, "--user", "carol", "--json")).stdout)
    assert shown["digest"] == digest and shown["call_id"] == waiting.call_id

    approved = await asyncio.to_thread(cli, stack, "approve", waiting.call_id, "--user", "carol", "--digest", digest,
                                       "--json")
    assert approved.exit_code == 0, approved.output
    assert json.loads(approved.stdout)["status"] == "approved"
    transcript = await turn
    await client.close()
    assert transcript.calls[waiting.call_id].outcome.status == "ok"


def test_stack_commands_answer_json_and_their_hints_carry_the_state_dir(stack) -> None:
    root = stack.layout.root
    runner = CliRunner()
    status = runner.invoke(app, ["status", "--state-dir", str(root), "--json"])
    assert status.exit_code == 0 and json.loads(status.stdout)["ok"] is True
    carol = mint_dev_token(stack.info.dev_issuer_url, "acme", "carol")
    who = runner.invoke(app, ["whoami", "--token", carol, "--state-dir", str(root), "--json"])
    assert who.exit_code == 0 and json.loads(who.stdout)["user"] == "carol"
    minted = runner.invoke(app, ["identity", "token", "--tenant", "acme", "--user", "bob", "--state-dir", str(root),
                                 "--json"])
    assert minted.exit_code == 0 and json.loads(minted.stdout)["token"].count(".") == 2
    said = runner.invoke(app, ["chat", "hello", "--state-dir", str(root), "--json"])
    assert said.exit_code == 0, said.output
    turn = json.loads(said.stdout)
    assert turn["reply"]["status"] == "ok" and turn["session_id"]
    again = runner.invoke(app, ["chat", "hello", "--state-dir", str(root), "--session", turn["session_id"]],
                          env={"COLUMNS": "60"})
    assert again.exit_code == 0, again.output
    assert f"continue with: caduceus chat --state-dir {root} --session {turn['session_id']} ..." in again.stdout
