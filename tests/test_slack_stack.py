"""Slack through the whole stack: a Slack DM becomes a governed turn, its risky call asks the approver in
their own Slack DM, a press on Approve is counted by the approval desk, and the reply lands in the thread.

Slack is a local server speaking its Web API; everything else is the embedded stack (identity's pairing,
policy, the approval workflow on Temporal, the broker's workers). The attacks a Slack button invites are
pressed here too: by someone who is not an approver, by an unpaired user, and for another call.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
from starlette.applications import Starlette
from typer.testing import CliRunner

from caduceus.cli import app
from caduceus.commands.demo import APPROVAL_MESSAGE
from caduceus_audit import AuditStore
from caduceus_bus import EventConnection
from caduceus_directory import DirectorySource
from caduceus_gateway.slack import EVENTS_PATH, SlackGateway, load_slack_config
from caduceus_gateway.slack.blocks import APPROVE_ACTION, parse_button_value
from caduceus_gateway.slack.testing import (
    FakeSlack,
    deliver_event,
    deliver_press,
    dm,
    event_body,
    free_port,
    press_payload,
    serve_fake_slack,
)
from caduceus_identity.devtoken import mint_dev_token
from caduceus_web import HttpServer

pytestmark = pytest.mark.timeout(400)
TEAM, SECRET = "T0ACME", "acme-signing-secret"
SECRET_FACT = "the vault code is 4417-ZETA"


def cli(stack, *args: str):
    return CliRunner().invoke(app, [*args, "--state-dir", str(stack.layout.root)])


async def pair(stack, slack: FakeSlack, url: str, user: str, person: str, ts: str) -> None:
    """The Slack user writes to the bot, gets a pairing code, and carol (an admin) approves it for `person`."""
    await deliver_event(url, SECRET, event_body(TEAM, dm(TEAM, user, "hello", ts)))
    told = await slack.until("chat.postMessage", channel=f"D{user}", timeout=60)
    assert "pairing code" in told[-1]["text"], told[-1]["text"]
    code = told[-1]["text"].split("pairing code ")[1][:9]
    approved = await asyncio.to_thread(cli, stack, "identity", "pairing", "approve", "--tenant", "acme",
                                       "--platform", "slack", "--code", code, "--user", person, "--token",
                                       mint_dev_token(stack.info.dev_issuer_url, "acme", "carol"))
    assert approved.exit_code == 0, approved.output


async def test_a_slack_dm_asks_the_approver_in_slack_and_the_reply_lands_in_the_thread(stack, tmp_path: Path):
    created = await asyncio.to_thread(cli, stack, "identity", "service-account", "create", "--tenant", "acme",
                                      "--name", "slack-acme", "--platform", "slack")
    assert created.exit_code == 0, created.output
    (tmp_path / "slack-acme.key").write_text(created.output.strip().splitlines()[-1])
    (tmp_path / "slack.yaml").write_text(f"workspaces:\n  {TEAM}:\n    tenant: acme\n    bot_token: env:BOT\n"
                                         "    signing_secret: env:SECRET\n    service_account_key: file:slack-acme.key\n")
    slack = FakeSlack(teams={"xoxb-acme": TEAM}, emails={"carol@acme.example": "UCAROL", "bob@acme.example": "UBOB"})
    api, api_url = await serve_fake_slack(slack)
    bus = await EventConnection.connect(stack.bus_settings("gateway"), name="slack-test", role="gateway")
    config = load_slack_config(tmp_path / "slack.yaml", {"BOT": "xoxb-acme", "SECRET": SECRET})
    gateway = SlackGateway(config, bus, directory=DirectorySource(stack.layout.root / "tenants.yaml"),
                           api_url=api_url, reply_timeout_s=240)
    http = HttpServer(Starlette(routes=gateway.routes()), "127.0.0.1", free_port(), what="gateway", port_setting="-")
    await http.start()
    await gateway.start()
    url = f"http://127.0.0.1:{http.port}{EVENTS_PATH}"
    try:
        # An unpaired user gets instructions, not an agent; then alice, bob and carol pair their Slack accounts.
        await pair(stack, slack, url, "UALICE", "alice", "1.1")
        await pair(stack, slack, url, "UBOB", "bob", "1.2")
        await pair(stack, slack, url, "UCAROL", "carol", "1.3")

        await deliver_event(url, SECRET, event_body(TEAM, dm(TEAM, "UALICE", APPROVAL_MESSAGE, "2.1")))
        asked = (await slack.until("chat.postMessage", channel="DUCAROL", thread_ts=None, timeout=120))[0]
        assert asked["text"].startswith("alice asks to run terminal")
        blocks = asked["blocks"] if isinstance(asked["blocks"], list) else json.loads(asked["blocks"])
        assert "rm -rf build" in json.dumps(blocks)
        buttons = next(b for b in blocks if b["type"] == "actions")["elements"]
        call_id, digest = parse_button_value(buttons[0]["value"])
        posted_ts = slack.answered("chat.postMessage", channel="DUCAROL", thread_ts=None)[0]["ts"]

        # Not an approver: bob's press is vouched for (he is bob) and refused by the desk.
        await deliver_press(url, SECRET, press_payload(TEAM, "UBOB", "DUCAROL", posted_ts, APPROVE_ACTION,
                                                       buttons[0]["value"]))
        told_bob = await slack.until("chat.postEphemeral", user="UBOB", timeout=30)
        assert "bob is not one of the approvers" in told_bob[0]["text"]
        # Not paired: nobody vouches for a stranger.
        await deliver_press(url, SECRET, press_payload(TEAM, "UEVE", "DUCAROL", posted_ts, APPROVE_ACTION,
                                                       buttons[0]["value"]))
        told_eve = await slack.until("chat.postEphemeral", user="UEVE", timeout=30)
        assert "not linked" in told_eve[0]["text"]
        # Another call's id on this message's button: nothing is answered.
        other = json.dumps({"call_id": "c-another-call", "digest": digest})
        await deliver_press(url, SECRET, press_payload(TEAM, "UCAROL", "DUCAROL", posted_ts, APPROVE_ACTION, other))
        told_carol = await slack.until("chat.postEphemeral", user="UCAROL", timeout=30)
        assert "does not belong to this approval" in told_carol[0]["text"]

        # carol approves: the desk counts it, the message shows it, the turn goes on and alice gets her reply.
        press = press_payload(TEAM, "UCAROL", "DUCAROL", posted_ts, APPROVE_ACTION, buttons[0]["value"])
        await deliver_press(url, SECRET, press)
        await deliver_press(url, SECRET, press)  # Slack delivering the same press again: answered once
        updated = await slack.until("chat.update", channel="DUCAROL", ts=posted_ts, timeout=60)
        final = updated[-1]
        final_blocks = final["blocks"] if isinstance(final["blocks"], list) else json.loads(final["blocks"])
        assert "Approved by carol (approve)" in json.dumps(final_blocks)
        assert not any(b["type"] == "actions" for b in final_blocks), "an approved message still has buttons"
        replies = await slack.until("chat.postMessage", channel="DUALICE", thread_ts="2.1", count=3, timeout=180)
        assert [r["text"] for r in replies][:2] == ["waiting for approval from admin for terminal, expires in 15 min",
                                                     "terminal call approved: approved by carol"]
        assert replies[2]["text"].startswith("Cleanup result:") and "build directory removed" in replies[2]["text"]

        # What alice says in a channel stays that channel's: her DM does not remember it, the channel does.
        told = {"type": "app_mention", "channel": "CGENERAL", "user": "UALICE", "ts": "3.1",
                "text": f"<@UBOT{TEAM}> Remember that {SECRET_FACT}"}
        await deliver_event(url, SECRET, event_body(TEAM, told))
        await slack.until("chat.postMessage", channel="CGENERAL", thread_ts="3.1", timeout=120)
        await deliver_event(url, SECRET, event_body(TEAM, dm(TEAM, "UALICE", "What do you remember?", "3.2")))
        in_dm = await slack.until("chat.postMessage", channel="DUALICE", thread_ts="3.2", timeout=120)
        assert in_dm[-1]["text"] == "I remember: nothing"
        asked_again = {**told, "ts": "3.3", "thread_ts": "3.1", "text": f"<@UBOT{TEAM}> What do you remember?"}
        await deliver_event(url, SECRET, event_body(TEAM, asked_again))
        in_channel = await slack.until("chat.postMessage", channel="CGENERAL", thread_ts="3.1", count=2, timeout=120)
        assert in_channel[-1]["text"] == f"I remember: {SECRET_FACT}"

        store = AuditStore(stack.info.audit_db_url)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            records = [r for r in store.records(tenant="acme") if r.call_id == call_id]
            kinds = [r.kind for r in records]
            if "approval.resolved" in kinds and kinds.count("approval.refused") >= 2:
                break
            await asyncio.sleep(0.3)
        refused = [json.loads(r.body) for r in records if r.kind == "approval.refused"]
        assert {r["channel"] for r in refused} >= {"slack:T0ACME:UBOB", "slack:T0ACME:UEVE"}
        assert any(r.kind == "approval.vouched" and json.loads(r.body)["vouch"]["vouch"]["user"] == "carol"
                   for r in records)
        assert not any(created.output.strip().splitlines()[-1] in r.body for r in store.records(tenant="acme"))
    finally:
        await gateway.stop()
        await http.stop()
        await api.stop()
        await bus.close()



async def test_only_identitys_current_signature_makes_a_vouch_count(stack) -> None:
    """A vouch signed by any other key, or by identity's own key but expired, is refused and audited; and the
    gateway's credential (the Slack integration's) cannot publish a vouch at all."""
    from caduceus_contracts import (
        ApprovalRefused,
        ApprovalVouched,
        SignedVouch,
        Signer,
        Vouch,
        ensure_signer,
        parse_event,
        subjects,
        utcnow,
    )
    from caduceus_embedded.testing import connect_recording_errors

    now = utcnow()

    def vouch(call_id: str, signer: Signer, expires_in_s: float) -> ApprovalVouched:
        payload = Vouch(tenant="acme", user="carol", platform="slack", platform_user="T0ACME:UCAROL",
                        vouched_by="slack-acme", call_id=call_id, digest="ab" * 32, answer="approve",
                        channel="slack:T0ACME:UCAROL", issued_at=now, expires_at=now + timedelta(seconds=expires_in_s))
        return ApprovalVouched(tenant="acme", call_id=call_id, vouch=SignedVouch.issue(signer, payload))

    identity = await EventConnection.connect(stack.bus_settings("identity"), name="forger", role="identity")
    watcher = await EventConnection.connect(stack.bus_settings("client"), name="watcher")
    refusals: dict[str, str] = {}

    async def on_refused(msg) -> None:
        event = parse_event(msg.data, expect=ApprovalRefused)
        refusals[event.call_id] = event.reason

    await watcher.subscribe(subjects.approval("refused", "acme"), on_refused)
    try:
        await identity.publish(subjects.approval("vouched", "acme"),
                               vouch("c-forged-key", Signer.generate("identity"), 60))
        await identity.publish(subjects.approval("vouched", "acme"),
                               vouch("c-expired", ensure_signer(stack.layout.keys, "identity"), -1))
        async with asyncio.timeout(20):
            while len(refusals) < 2:
                await asyncio.sleep(0.1)
    finally:
        await identity.close()
        await watcher.close()
    assert "not valid" in refusals["c-forged-key"]
    assert "expired" in refusals["c-expired"]

    slack = await connect_recording_errors(stack.nats_url, stack.bus_settings("gateway"))
    await slack.nc.publish(subjects.approval("vouched", "acme"), b"{}")
    assert await slack.violations(), "the gateway credential could publish a vouch"
    await slack.nc.close()
