"""The relay on a real nats-server: a conversation's updates reach the people following that conversation, and
nobody else; a turn ends with the reply to its own message."""

from __future__ import annotations

import pytest

from caduceus_bus import BusSettings, EventConnection
from caduceus_contracts import ChatMessageIn, ChatNotice, ChatReply, ToolCallCompleted, parse_event, subjects
from caduceus_gateway import Relay, Speaker
from caduceus_gateway.relay import update_of

pytestmark = pytest.mark.timeout(60)


async def test_a_turn_yields_its_notices_and_ends_with_its_own_reply(nats_server) -> None:
    conn = await EventConnection.connect(BusSettings(nats_url=nats_server.url), "gateway-test")
    await conn.ensure_stream()
    relay = Relay(conn)
    sent: list[ChatMessageIn] = []

    async def answer(msg) -> None:
        message = parse_event(msg.data, expect=ChatMessageIn, subject=msg.subject)
        sent.append(message)
        # What identity, approval and the broker would publish back, including another conversation's reply.
        relay.deliver(ChatReply(tenant="acme", message_id="other", session_id="s-other", text="not yours"))
        relay.deliver(ChatNotice(tenant="acme", session_id=message.session_id, text="waiting for approval"))
        relay.deliver(ChatReply(tenant="globex", message_id=message.message_id, session_id=message.session_id,
                                text="another tenant's"))
        relay.deliver(ChatReply(tenant="acme", message_id=message.message_id, session_id=message.session_id,
                                text="done"))

    sub = await conn.nc.subscribe(subjects.chat_in("acme"), cb=answer)
    speaker = Speaker(tenant="acme", token="t0ken", channel="web:alice")
    with relay.listen("acme", "s-1") as watcher:
        updates = [u async for u in relay.turn(speaker, "s-1", "hello", timeout_s=10)]
    assert [(u.kind, u.text) for u in updates] == [("notice", "waiting for approval"), ("reply", "done")]
    assert watcher.qsize() == 2  # a second listener of the conversation (another browser tab) saw the same
    assert (sent[0].channel, sent[0].token, sent[0].text) == ("web:alice", "t0ken", "hello")
    await sub.unsubscribe()
    await conn.close()


def test_a_secret_in_a_tool_result_is_redacted_before_anyone_is_shown_it() -> None:
    completed = ToolCallCompleted(tenant="acme", call_id="c1", workspace="default", session_id="s-1", tool="terminal",
                                  status="ok", result="export GITHUB_TOKEN=ghp_abcdefghijklmnopqrstuvwxyz0123456789")
    update = update_of(completed)
    assert update is not None and "ghp_" not in update.text and "REDACTED" in update.text
