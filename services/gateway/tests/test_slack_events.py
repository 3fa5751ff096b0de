"""Slack deliveries at the wire: signed Events API requests and Socket Mode envelopes in, Web API calls out.

The gateway runs for real against a real nats-server and a local server speaking Slack's Web API. On the
bus, a stand-in plays identity's part of a turn (pairing refused or a reply), so these tests pin the
gateway alone; tests/test_slack_stack.py runs the same through the whole stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from starlette.applications import Starlette

from caduceus_bus import BusSettings, EventConnection
from caduceus_contracts import (
    ApprovalEscalated,
    ApprovalReminded,
    ApprovalRequested,
    ApprovalResolved,
    ApprovalView,
    ApprovalVote,
    ApprovalVouchRequested,
    ChatMessageIn,
    ChatReply,
    ErrorEvent,
    call_digest,
    parse_event,
    subjects,
    utcnow,
)
from caduceus_directory import DirectorySource
from caduceus_gateway.slack import EVENTS_PATH, SlackGateway, parse_slack_config
from caduceus_gateway.slack.blocks import APPROVE_ACTION
from caduceus_gateway.slack.testing import (
    FakeSlack,
    FakeSocketMode,
    deliver_event,
    deliver_press,
    dm,
    event_body,
    free_port,
    press_payload,
    serve_fake_slack,
)
from caduceus_web import HttpServer

pytestmark = pytest.mark.timeout(120)

SECRET_1, SECRET_2 = "signing-secret-of-T1", "signing-secret-of-T2"
SLACK_YAML = """\
workspaces:
  T1ACME:
    tenant: acme
    bot_token: env:T1_BOT
    signing_secret: env:T1_SECRET
    service_account_key: env:T1_KEY
  T2GLOBEX:
    tenant: globex
    bot_token: env:T2_BOT
    signing_secret: env:T2_SECRET
    service_account_key: env:T2_KEY
    link_by_email: true
  T3SOCKET:
    tenant: acme
    mode: socket
    bot_token: env:T3_BOT
    app_token: env:T3_APP
    signing_secret: env:T3_SECRET
    service_account_key: env:T1_KEY
"""
ENV = {"T1_BOT": "xoxb-t1", "T1_SECRET": SECRET_1, "T1_KEY": "cad_sa_key_one", "T2_BOT": "xoxb-t2",
       "T2_SECRET": SECRET_2, "T2_KEY": "cad_sa_key_two", "T3_BOT": "xoxb-t3", "T3_APP": "xapp-t3",
       "T3_SECRET": "unused-in-socket-mode"}
TENANTS = "tenants:\n  acme:\n    display_name: Acme\n    users:\n      alice: {email: alice@acme.example, roles: [member]}\n" \
          "      dora: {email: dora@acme.example, roles: [admin]}\n" \
          "  globex:\n    display_name: Globex\n    users:\n      gina: {email: gina@globex.example, roles: [member]}\n"


@dataclass
class World:
    slack: FakeSlack
    sockets: FakeSocketMode
    url: str
    bus: EventConnection
    api_url: str
    tenants_file: Path
    gateway: SlackGateway | None = None
    chat_in: list[ChatMessageIn] = field(default_factory=list)
    errors: list[ErrorEvent] = field(default_factory=list)
    paired: set[str] = field(default_factory=set)
    reply_delay_s: float = 0.0

    async def until_errors(self, count: int = 1, timeout: float = 10.0) -> list[ErrorEvent]:
        deadline = time.monotonic() + timeout
        while len(self.errors) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.errors


@pytest.fixture()
async def world(nats_server, tmp_path: Path) -> AsyncIterator[World]:
    slack = FakeSlack(teams={"xoxb-t1": "T1ACME", "xoxb-t2": "T2GLOBEX", "xoxb-t3": "T3SOCKET",
                             "xapp-t3": "T3SOCKET"})
    sockets = FakeSocketMode()
    await sockets.start()
    slack.socket_url = sockets.url
    api, api_url = await serve_fake_slack(slack)
    settings = BusSettings(nats_url=nats_server.url)
    bus = await EventConnection.connect(settings, name="slack-test", role="gateway")
    await bus.ensure_stream()
    stand_in = await EventConnection.connect(settings, name="identity-stand-in", role="identity")
    (tmp_path / "tenants.yaml").write_text(TENANTS)
    config = parse_slack_config(SLACK_YAML, "slack.yaml", tmp_path, ENV)
    gateway = SlackGateway(config, bus, directory=DirectorySource(tmp_path / "tenants.yaml"), api_url=api_url,
                           reply_timeout_s=20)
    http = HttpServer(Starlette(routes=gateway.routes()), "127.0.0.1", free_port(), what="gateway", port_setting="-")
    await http.start()
    world = World(slack, sockets, f"http://127.0.0.1:{http.port}{EVENTS_PATH}", bus, api_url, tmp_path / "tenants.yaml")

    async def play_identity(msg) -> None:
        message = parse_event(msg.data, expect=ChatMessageIn)
        world.chat_in.append(message)
        await asyncio.sleep(world.reply_delay_s)
        if message.platform_user in world.paired:
            reply = ChatReply(tenant=message.tenant, message_id=message.message_id, session_id=message.session_id,
                              text=f"you said: {message.text}")
        else:
            reply = ChatReply(tenant=message.tenant, message_id=message.message_id, session_id=message.session_id,
                              status="refused", text=f"slack user {message.platform_user!r} is not linked: ask an "
                              "administrator to approve pairing code ABCD-EFGH")
        await stand_in.publish(subjects.chat_reply(message.tenant, message.session_id), reply)

    async def on_error(msg) -> None:
        world.errors.append(parse_event(msg.data, expect=ErrorEvent))

    await stand_in.subscribe(subjects.CHAT_IN_ALL, play_identity)
    await stand_in.subscribe("cad.v1.error.*.gateway", on_error)
    await gateway.start()
    world.gateway = gateway
    try:
        yield world
    finally:
        await gateway.stop()
        await http.stop()
        await api.stop()
        await sockets.stop()
        with contextlib.suppress(Exception):
            await stand_in.close()
            await bus.close()


async def test_a_direct_message_is_acknowledged_at_once_and_answered_in_its_thread(world: World) -> None:
    world.paired.add("T1ACME:U1")
    world.reply_delay_s = 4.0  # a turn slower than Slack's three seconds
    response = await deliver_event(world.url, SECRET_1, event_body("T1ACME", dm("T1ACME", "U1", "hi", "100.1")))
    assert response.status_code == 200
    assert not world.slack.made("chat.postMessage"), "the acknowledgement waited for the turn"
    posted = await world.slack.until("chat.postMessage", channel="DU1")
    assert posted[0]["thread_ts"] == "100.1" and posted[0]["text"] == "you said: hi"
    message = world.chat_in[0]
    assert (message.tenant, message.platform, message.platform_user) == ("acme", "slack", "T1ACME:U1")
    assert message.token == "cad_sa_key_one"  # the installation's service-account key, never a person's


async def test_a_reply_in_the_thread_continues_the_conversation_and_a_channel_has_its_own_memory(world) -> None:
    world.paired.add("T1ACME:U1")
    await deliver_event(world.url, SECRET_1, event_body("T1ACME", dm("T1ACME", "U1", "first", "200.1")))
    await deliver_event(world.url, SECRET_1, event_body("T1ACME", dm("T1ACME", "U1", "again", "200.2", "200.1")))
    mention = {"type": "app_mention", "channel": "CGENERAL", "user": "U1", "text": "<@UBOTT1ACME> hello",
               "ts": "300.1"}
    await deliver_event(world.url, SECRET_1, event_body("T1ACME", mention))
    await world.slack.until("chat.postMessage", count=3)
    first, again, channel = world.chat_in
    assert first.session_id == again.session_id != channel.session_id
    assert first.channel == "dm:slack:T1ACME:U1" and channel.channel == "channel:slack:T1ACME:CGENERAL"
    assert channel.text == "hello"  # the bot's mention is not part of what the person said
    assert world.slack.made("chat.postMessage", channel="CGENERAL", thread_ts="300.1")


async def test_an_unpaired_user_gets_instructions_and_in_a_channel_only_they_see_them(world: World) -> None:
    await deliver_event(world.url, SECRET_1, event_body("T1ACME", dm("T1ACME", "U9", "hi", "400.1")))
    told = await world.slack.until("chat.postMessage", channel="DU9")
    assert "pairing code ABCD-EFGH" in told[0]["text"]
    mention = {"type": "app_mention", "channel": "CGENERAL", "user": "U9", "text": "<@UBOTT1ACME> hi", "ts": "401.1"}
    await deliver_event(world.url, SECRET_1, event_body("T1ACME", mention))
    private = await world.slack.until("chat.postEphemeral", channel="CGENERAL", user="U9")
    assert "pairing code" in private[0]["text"]
    assert not world.slack.made("chat.postMessage", channel="CGENERAL")


async def test_each_workspace_speaks_for_its_own_tenant(world: World) -> None:
    world.paired.update({"T1ACME:U1", "T2GLOBEX:U1"})
    await deliver_event(world.url, SECRET_1, event_body("T1ACME", dm("T1ACME", "U1", "acme here", "500.1")))
    await deliver_event(world.url, SECRET_2, event_body("T2GLOBEX", dm("T2GLOBEX", "U1", "globex here", "500.2")))
    await world.slack.until("chat.postMessage", count=2)
    assert {(m.tenant, m.text, m.token) for m in world.chat_in} == {
        ("acme", "acme here", "cad_sa_key_one"), ("globex", "globex here", "cad_sa_key_two")}
    tokens = {c.token for c in world.slack.calls if c.method == "chat.postMessage"}
    assert tokens == {"xoxb-t1", "xoxb-t2"}  # each reply goes out as that workspace's bot


async def test_a_forged_signature_is_refused_and_audited(world: World) -> None:
    body = event_body("T1ACME", dm("T1ACME", "U1", "let me in", "600.1"))
    forged = await deliver_event(world.url, "a-guessed-secret", body)
    other_workspace_secret = await deliver_event(world.url, SECRET_2, body)  # globex's secret, acme's team
    assert forged.status_code == 401 and other_workspace_secret.status_code == 401
    errors = await world.until_errors(2)
    assert all(e.tenant == "acme" and "signature" in e.reason for e in errors)
    await asyncio.sleep(0.5)
    assert not world.chat_in and not world.slack.made("chat.postMessage")


async def test_a_stale_timestamp_is_refused_even_when_correctly_signed(world: World) -> None:
    body = event_body("T1ACME", dm("T1ACME", "U1", "old news", "700.1"))
    stale = await deliver_event(world.url, SECRET_1, body, timestamp=int(time.time()) - 600)
    assert stale.status_code == 401
    await world.until_errors(1)
    assert not world.chat_in


async def test_an_event_from_an_unknown_workspace_is_refused_and_audited(world: World) -> None:
    body = event_body("T9EVIL", dm("T9EVIL", "U1", "hello from elsewhere", "800.1"))
    refused = await deliver_event(world.url, "evil-secret", body)
    assert refused.status_code == 403
    errors = await world.until_errors(1)
    assert errors[0].tenant == "_system" and "T9EVIL" in errors[0].reason
    assert not world.chat_in


async def test_a_delivery_slack_repeats_is_handled_once(world: World) -> None:
    world.paired.add("T1ACME:U1")
    body = event_body("T1ACME", dm("T1ACME", "U1", "once please", "900.1"), event_id="Ev-REPEATED")
    first = await deliver_event(world.url, SECRET_1, body)
    retried = await deliver_event(world.url, SECRET_1, body, **{"X-Slack-Retry-Num": "1",
                                                                 "X-Slack-Retry-Reason": "http_timeout"})
    assert first.status_code == retried.status_code == 200
    await world.slack.until("chat.postMessage", channel="DU1")
    await asyncio.sleep(1.0)
    assert len(world.chat_in) == 1 and len(world.slack.made("chat.postMessage")) == 1


async def test_rate_limited_web_api_calls_wait_for_retry_after_and_then_succeed(world: World) -> None:
    world.paired.add("T1ACME:U1")
    world.slack.throttle["chat.postMessage"] = 2
    await deliver_event(world.url, SECRET_1, event_body("T1ACME", dm("T1ACME", "U1", "busy day", "1000.1")))
    posted = await world.slack.until("chat.postMessage", channel="DU1")
    assert posted[0]["text"] == "you said: busy day"
    assert [method for method, _ in world.slack.throttled] == ["chat.postMessage", "chat.postMessage"]
    waited = world.slack.throttled[1][1] - world.slack.throttled[0][1]
    assert waited >= 0.9, "the retry did not honour Retry-After: 1"


async def test_socket_mode_acknowledges_each_envelope_and_answers_in_the_thread(world: World) -> None:
    world.paired.add("T3SOCKET:U5")
    await asyncio.wait_for(world.sockets.connected.wait(), 10)
    envelope = await world.sockets.send("events_api", event_body("T3SOCKET", dm("T3SOCKET", "U5", "via socket",
                                                                                  "1100.1")))
    posted = await world.slack.until("chat.postMessage", channel="DU5")
    assert posted[0]["thread_ts"] == "1100.1" and posted[0]["text"] == "you said: via socket"
    assert envelope in {ack["envelope_id"] for ack in world.sockets.acks}
    assert world.chat_in[0].tenant == "acme" and world.chat_in[0].platform_user == "T3SOCKET:U5"


async def test_socket_mode_refuses_an_envelope_for_another_workspace(world: World) -> None:
    await asyncio.wait_for(world.sockets.connected.wait(), 10)
    await world.sockets.send("events_api", event_body("T9EVIL", dm("T9EVIL", "U5", "sneaky", "1200.1")))
    errors = await world.until_errors(1)
    assert "T9EVIL" in errors[0].reason
    await asyncio.sleep(0.5)
    assert not world.chat_in


def waiting_view(call_id: str, **changes) -> ApprovalView:
    args = {"command": "rm -rf build"}
    now = utcnow()
    fields = dict(workflow_id=f"approval-acme-{call_id}", tenant="acme", call_id=call_id, workspace="default",
                  session_id="s1", tool="terminal", args=args, requester="bob", reason="deletes need an admin",
                  digest=call_digest(tenant="acme", workspace="default", session="s1", tool="terminal", args=args),
                  approvers=("alice",), quorum=1, opened_at=now, expires_at=now + timedelta(minutes=15))
    return ApprovalView(**{**fields, **changes})


async def test_an_approval_reaches_the_approvers_dm_and_its_message_follows_it_to_expiry(world: World) -> None:
    world.slack.emails["alice@acme.example"] = "UALICE"
    waiting = waiting_view("c-expiring")
    await world.bus.publish(subjects.approval("requested", "acme"),
                            ApprovalRequested(tenant="acme", call_id=waiting.call_id, approval=waiting))
    posted = await world.slack.until("chat.postMessage", channel="DUALICE")
    assert any(block["type"] == "actions" for block in posted[0]["blocks"])
    assert world.slack.made("users.lookupByEmail", email="alice@acme.example")
    ts = world.slack.answered("chat.postMessage", channel="DUALICE")[0]["ts"]

    expired = waiting.model_copy(update={"status": "expired", "resolution": "nobody answered in time"})
    await world.bus.publish(subjects.approval("resolved", "acme"),
                            ApprovalResolved(tenant="acme", call_id=waiting.call_id, approval=expired))
    updated = await world.slack.until("chat.update", channel="DUALICE", ts=ts)
    assert "Expired: nobody answered in time" in json.dumps(updated[0]["blocks"])
    assert not any(block["type"] == "actions" for block in updated[0]["blocks"])
    # A step that was overtaken (a late reminder) does not bring the buttons back.
    await world.bus.publish(subjects.approval("reminded", "acme"),
                            ApprovalReminded(tenant="acme", call_id=waiting.call_id, approval=waiting))
    await asyncio.sleep(0.5)
    assert len(world.slack.made("chat.update", channel="DUALICE", ts=ts)) == 1


async def test_a_press_on_a_message_the_gateway_never_posted_answers_nothing(world: World) -> None:
    vouches: list[bytes] = []

    async def on_vouch(msg) -> None:
        vouches.append(msg.data)

    await world.bus.subscribe(subjects.APPROVAL_VOUCH_ALL, on_vouch)
    value = json.dumps({"call_id": "c-unknown", "digest": "ab" * 32})
    response = await deliver_press(world.url, SECRET_1, press_payload("T1ACME", "U1", "DU1", "1.1", APPROVE_ACTION,
                                                                      value))
    assert response.status_code == 200
    told = await world.slack.until("chat.postEphemeral", user="U1")
    assert "does not belong to this approval" in told[0]["text"]
    assert "c-unknown" in (await world.until_errors(1))[0].reason
    assert not vouches


async def test_escalation_brings_the_approval_to_the_new_approvers_too(world: World) -> None:
    world.slack.emails.update({"alice@acme.example": "UALICE", "dora@acme.example": "UDORA"})
    waiting = waiting_view("c-escalating")
    await world.bus.publish(subjects.approval("requested", "acme"),
                            ApprovalRequested(tenant="acme", call_id=waiting.call_id, approval=waiting))
    await world.slack.until("chat.postMessage", channel="DUALICE")
    escalated = waiting.model_copy(update={"approvers": ("alice", "dora"), "escalated": True})
    await world.bus.publish(subjects.approval("escalated", "acme"),
                            ApprovalEscalated(tenant="acme", call_id=waiting.call_id, approval=escalated))
    await world.slack.until("chat.postMessage", channel="DUDORA")
    await world.slack.until("chat.update", channel="DUALICE")
    asked_alice = [c for c in world.slack.calls if c.method == "chat.postMessage" and c.token == "xoxb-t1"
                   and c.params.get("channel") == "DUALICE"]
    assert len(asked_alice) == 1  # alice is not asked twice in a workspace


async def test_after_a_restart_a_press_on_an_earlier_approval_still_answers_it(world: World) -> None:
    world.slack.emails["alice@acme.example"] = "UALICE"
    waiting = waiting_view("c-before-restart")
    await world.bus.publish(subjects.approval("requested", "acme"),
                            ApprovalRequested(tenant="acme", call_id=waiting.call_id, approval=waiting))
    await world.slack.until("chat.postMessage", channel="DUALICE")
    ts = world.slack.answered("chat.postMessage", channel="DUALICE")[0]["ts"]
    value = json.dumps({"call_id": waiting.call_id, "digest": waiting.digest})

    # The gateway process ends; a new one never saw the approval asked, and Slack says which call the message shows.
    await world.gateway.stop()
    config = parse_slack_config(SLACK_YAML, "slack.yaml", world.tenants_file.parent, ENV)
    restarted = SlackGateway(config, world.bus, directory=DirectorySource(world.tenants_file), api_url=world.api_url)
    http = HttpServer(Starlette(routes=restarted.routes()), "127.0.0.1", free_port(), what="gateway",
                      port_setting="-")
    await http.start()
    await restarted.start()
    vouches: list[ApprovalVouchRequested] = []

    async def on_vouch(msg) -> None:
        vouches.append(parse_event(msg.data, expect=ApprovalVouchRequested))

    await world.bus.subscribe(subjects.APPROVAL_VOUCH_ALL, on_vouch)
    try:
        url = f"http://127.0.0.1:{http.port}{EVENTS_PATH}"
        forged = json.dumps({"call_id": "c-other", "digest": "ab" * 32})
        await deliver_press(url, SECRET_1, press_payload("T1ACME", "UALICE", "DUALICE", ts, APPROVE_ACTION, forged))
        await world.slack.until("chat.postEphemeral", user="UALICE")  # another call's id on this message: refused
        await deliver_press(url, SECRET_1, press_payload("T1ACME", "UALICE", "DUALICE", ts, APPROVE_ACTION, value))
        deadline = time.monotonic() + 10
        while not vouches and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert [(v.call_id, v.digest, v.platform_user) for v in vouches] == [
            (waiting.call_id, waiting.digest, "T1ACME:UALICE")]
        approved = waiting.model_copy(update={"status": "approved", "votes": (
            ApprovalVote(approver="alice", answer="approve", at=utcnow()),)})
        await world.bus.publish(subjects.approval("resolved", "acme"),
                                ApprovalResolved(tenant="acme", call_id=waiting.call_id, approval=approved))
        updated = await world.slack.until("chat.update", channel="DUALICE", ts=ts)
        assert "Approved by alice" in json.dumps(updated[-1]["blocks"])
    finally:
        await restarted.stop()
        await http.stop()


async def test_slacks_url_check_is_answered_only_when_signed_by_an_installation(world: World) -> None:
    check = {"token": "legacy", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
             "type": "url_verification"}
    answered = await deliver_event(world.url, SECRET_2, check)
    assert answered.status_code == 200 and check["challenge"] in answered.text
    refused = await deliver_event(world.url, "not-a-secret-of-ours", check)
    assert refused.status_code == 401 and check["challenge"] not in refused.text


async def test_only_a_workspace_that_links_by_email_passes_on_the_slack_users_email(world: World) -> None:
    world.slack.emails.update({"gina@globex.example": "UGINA", "alice@acme.example": "UALICE"})
    await deliver_event(world.url, SECRET_2, event_body("T2GLOBEX", dm("T2GLOBEX", "UGINA", "hi", "1300.1")))
    await deliver_event(world.url, SECRET_1, event_body("T1ACME", dm("T1ACME", "UALICE", "hi", "1300.2")))
    await world.slack.until("chat.postMessage", count=2)
    emails = {m.platform_user: m.platform_email for m in world.chat_in}
    assert emails == {"T2GLOBEX:UGINA": "gina@globex.example", "T1ACME:UALICE": None}


async def test_a_forged_delivery_cannot_make_the_genuine_one_look_like_a_repeat(world: World) -> None:
    world.paired.add("T1ACME:U1")
    genuine = event_body("T1ACME", dm("T1ACME", "U1", "the real one", "1400.1"), event_id="Ev-TARGETED")
    forged = await deliver_event(world.url, "guessed", genuine)
    assert forged.status_code == 401
    assert (await deliver_event(world.url, SECRET_1, genuine)).status_code == 200
    posted = await world.slack.until("chat.postMessage", channel="DU1")
    assert posted[0]["text"] == "you said: the real one"


async def test_a_reminder_nudges_only_the_approvers_who_have_not_answered_in_their_dm(world: World) -> None:
    world.slack.emails.update({"alice@acme.example": "UALICE", "dora@acme.example": "UDORA"})
    waiting = waiting_view("c-reminded", approvers=("alice", "dora"), quorum=2)
    await world.bus.publish(subjects.approval("requested", "acme"),
                            ApprovalRequested(tenant="acme", call_id=waiting.call_id, approval=waiting))
    await world.slack.until("chat.postMessage", channel="DUDORA")
    voted = waiting.model_copy(update={"votes": (ApprovalVote(approver="alice", answer="approve", at=utcnow()),)})
    await world.bus.publish(subjects.approval("reminded", "acme"),
                            ApprovalReminded(tenant="acme", call_id=waiting.call_id, approval=voted, remind=("dora",)))
    dora_ts = world.slack.answered("chat.postMessage", channel="DUDORA")[0]["ts"]
    nudged = await world.slack.until("chat.postMessage", channel="DUDORA", thread_ts=dora_ts)
    assert "still waiting for your answer" in nudged[0]["text"]
    await asyncio.sleep(0.3)
    assert not [c for c in world.slack.made("chat.postMessage", channel="DUALICE") if c.get("thread_ts")]


async def test_a_flood_of_forged_requests_is_refused_without_flooding_the_audit_trail(world: World) -> None:
    body = event_body("T9FLOOD", dm("T9FLOOD", "U1", "spam", "1500.1"))
    answers = await asyncio.gather(*(deliver_event(world.url, "nope", body) for _ in range(40)))
    assert {a.status_code for a in answers} == {403}
    await asyncio.sleep(1.0)
    flood = [e for e in world.errors if "T9FLOOD" in e.reason]
    assert len(flood) == 30


async def test_a_button_press_over_socket_mode_asks_identity_to_vouch_and_is_acknowledged(world: World) -> None:
    await asyncio.wait_for(world.sockets.connected.wait(), 10)
    world.slack.emails["alice@acme.example"] = "UALICE"
    waiting = waiting_view("c-socket")
    vouches: list[ApprovalVouchRequested] = []

    async def on_vouch(msg) -> None:
        vouches.append(parse_event(msg.data, expect=ApprovalVouchRequested))

    await world.bus.subscribe(subjects.APPROVAL_VOUCH_ALL, on_vouch)
    await world.bus.publish(subjects.approval("requested", "acme"),
                            ApprovalRequested(tenant="acme", call_id=waiting.call_id, approval=waiting))
    await world.slack.until("chat.postMessage", channel="DUALICE", count=2)  # T1ACME's and T3SOCKET's bots
    ts = next(c.answer["ts"] for c in world.slack.calls if c.method == "chat.postMessage" and c.token == "xoxb-t3")
    value = json.dumps({"call_id": waiting.call_id, "digest": waiting.digest})
    envelope = await world.sockets.send("interactive", press_payload("T3SOCKET", "UALICE", "DUALICE", ts,
                                                                     APPROVE_ACTION, value))
    deadline = time.monotonic() + 10
    while not vouches and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert [(v.call_id, v.platform_user, v.channel) for v in vouches] == [
        (waiting.call_id, "T3SOCKET:UALICE", "slack:T3SOCKET:UALICE")]
    assert envelope in {ack["envelope_id"] for ack in world.sockets.acks}
