"""EventConnection: every event is kept in the CADUCEUS stream, and a retried publish is stored once."""

from __future__ import annotations

from caduceus_bus import EventConnection
from caduceus_contracts import ChatMessageIn, ChatReply, parse_event, subjects


async def stored_count(connection: EventConnection, subject: str) -> int:
    info = await connection.js.stream_info(connection.settings.stream_name, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


async def test_published_event_is_kept_in_the_stream(connection, tenant):
    subject = subjects.chat_in(tenant)
    event = ChatMessageIn(tenant=tenant, session_id="s-1", token="tok", text="hello")
    await connection.publish(subject, event)
    stored = await connection.js.get_last_msg(connection.settings.stream_name, subject)
    assert parse_event(stored.data, subject=subject) == event
    assert stored.headers["Nats-Msg-Id"] == event.event_id


async def test_republishing_the_same_event_stores_it_once(connection, tenant):
    subject = subjects.chat_reply(tenant, "s-1")
    event = ChatReply(tenant=tenant, message_id="m-1", session_id="s-1", text="done")
    await connection.publish(subject, event)
    await connection.publish(subject, event)  # a retry after a lost ack
    assert await stored_count(connection, subject) == 1
    await connection.publish(subject, ChatReply(tenant=tenant, message_id="m-2", session_id="s-1", text="again"))
    assert await stored_count(connection, subject) == 2


async def test_ensure_stream_is_idempotent_and_keeps_events(connection, tenant):
    subject = subjects.chat_in(tenant)
    await connection.publish(subject, ChatMessageIn(tenant=tenant, session_id="s-1", token="tok", text="hello"))
    await connection.ensure_stream()
    assert await stored_count(connection, subject) == 1
