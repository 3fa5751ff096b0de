"""A FastStream service built with make_broker: valid events reach the handler, anything else becomes an
audited ErrorEvent on cad.v1.error.<tenant>.<service> and never reaches it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from faststream.nats import NatsMessage

from caduceus_bus import (
    BusSettings,
    EventConnection,
    EventPublisher,
    ensure_event_stream,
    make_broker,
)
from caduceus_contracts import (
    ChatMessageIn,
    ChatReply,
    ErrorEvent,
    parse_event,
    subjects,
)

SERVICE = "probe"
WAIT_S = 5.0


class ProbeService:
    """The smallest service: accepts ChatMessageIn on every tenant's chat.in subject."""

    def __init__(self, settings: BusSettings) -> None:
        self.broker = make_broker(settings, SERVICE)
        self.publisher = EventPublisher(self.broker, settings, SERVICE)
        self.settings = settings
        self.accepted: asyncio.Queue[ChatMessageIn] = asyncio.Queue()
        self.broker.subscriber(subjects.CHAT_IN_ALL, queue=SERVICE)(self.handle)

    async def handle(self, msg: NatsMessage) -> None:
        event = await self.publisher.receive(msg.raw_message.subject, msg.body, ChatMessageIn)
        if event is not None:
            await self.accepted.put(event)


@pytest.fixture()
async def service(settings) -> AsyncIterator[ProbeService]:
    probe = ProbeService(settings)
    await probe.broker.start()
    await ensure_event_stream(probe.broker, settings)
    yield probe
    await probe.broker.stop()


async def collect(connection: EventConnection, subject: str) -> asyncio.Queue:
    queue: asyncio.Queue = asyncio.Queue()

    async def on_message(msg) -> None:
        await queue.put(msg)

    await connection.subscribe(subject, on_message)
    await connection.nc.flush()
    return queue


async def next_error(queue: asyncio.Queue, subject: str) -> ErrorEvent:
    msg = await asyncio.wait_for(queue.get(), WAIT_S)
    return parse_event(msg.data, expect=ErrorEvent, subject=msg.subject)  # type: ignore[return-value]


async def test_valid_event_reaches_the_handler(service, connection, tenant):
    event = ChatMessageIn(tenant=tenant, session_id="s-1", token="tok", text="hello")
    await connection.publish(subjects.chat_in(tenant), event)
    assert await asyncio.wait_for(service.accepted.get(), WAIT_S) == event


async def test_malformed_json_becomes_an_error_event(service, connection, tenant):
    errors = await collect(connection, subjects.error(tenant, SERVICE))
    await connection.nc.publish(subjects.chat_in(tenant), b'{"kind": "chat.message.in", oops')
    error = await next_error(errors, subjects.error(tenant, SERVICE))
    assert error.tenant == tenant and error.service == SERVICE
    assert error.subject == subjects.chat_in(tenant)
    assert "Invalid JSON" in error.reason
    assert error.excerpt.startswith('{"kind"')
    assert service.accepted.empty()


async def test_event_for_another_tenant_becomes_an_error_on_the_subject_tenant(service, connection, tenant):
    errors = await collect(connection, subjects.error(tenant, SERVICE))
    intruder = ChatMessageIn(tenant="acme", session_id="s-1", token="tok", text="let me in")
    await connection.nc.publish(subjects.chat_in(tenant), intruder.model_dump_json().encode())
    error = await next_error(errors, subjects.error(tenant, SERVICE))
    assert "tenant 'acme'" in error.reason
    assert service.accepted.empty()


async def test_wrong_kind_becomes_an_error_event(service, connection, tenant):
    errors = await collect(connection, subjects.error(tenant, SERVICE))
    reply = ChatReply(tenant=tenant, message_id="m-1", session_id="s-1", text="not a chat message")
    await connection.nc.publish(subjects.chat_in(tenant), reply.model_dump_json().encode())
    error = await next_error(errors, subjects.error(tenant, SERVICE))
    assert "expected chat.message.in event, got chat.reply" in error.reason


async def test_message_without_a_valid_tenant_is_reported_under_the_system_tenant(service, connection, tenant):
    system_errors = await collect(connection, subjects.error(subjects.SYSTEM_TENANT, SERVICE))
    bad_subject = f"cad.v1.chat.in.{tenant.upper()}"
    await connection.nc.publish(bad_subject, json.dumps({"kind": "chat.message.in"}).encode())
    while True:  # other tests may report system errors too; find ours
        error = await next_error(system_errors, subjects.error(subjects.SYSTEM_TENANT, SERVICE))
        if error.subject == bad_subject:
            break
    assert error.tenant == subjects.SYSTEM_TENANT


async def test_error_events_are_kept_in_the_stream(service, connection, tenant):
    errors = await collect(connection, subjects.error(tenant, SERVICE))
    await connection.nc.publish(subjects.chat_in(tenant), b"not json")
    await next_error(errors, subjects.error(tenant, SERVICE))
    stored = await connection.js.get_last_msg(connection.settings.stream_name, subjects.error(tenant, SERVICE))
    assert parse_event(stored.data, expect=ErrorEvent).subject == subjects.chat_in(tenant)
