"""Trace context travels in message headers: one trace covers a chat turn across services."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from caduceus_bus import BusService, EventConnection, Route, RouteTable, extract_context
from caduceus_contracts import ChatMessageIn, ChatReply, subjects
from caduceus_embedded.testing import until_routed

WAIT_S = 5.0


@pytest.fixture()
def tracer():
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("bus-tests")


def trace_id_of(traceparent: str) -> str:
    version, trace_id, _span_id, _flags = traceparent.split("-")
    assert version == "00"
    return trace_id


async def test_traceparent_reaches_a_plain_subscriber(connection, tenant, tracer):
    received: asyncio.Queue = asyncio.Queue()

    async def on_message(msg) -> None:
        await received.put(msg)

    await connection.subscribe(subjects.chat_in(tenant), on_message)
    with tracer.start_as_current_span("chat turn") as span:
        await connection.publish(subjects.chat_in(tenant), ChatMessageIn(tenant=tenant, session_id="s-1",
                                                                          token="tok", text="hi"))
    msg = await asyncio.wait_for(received.get(), WAIT_S)
    expected = format(span.get_span_context().trace_id, "032x")
    assert trace_id_of(msg.headers["traceparent"]) == expected
    restored = trace.get_current_span(extract_context(msg.headers)).get_span_context()
    assert restored.trace_id == span.get_span_context().trace_id


async def echo(connection: EventConnection, event: ChatMessageIn) -> None:
    await connection.publish(subjects.chat_reply(event.tenant, event.session_id),
                             ChatReply(tenant=event.tenant, message_id=event.message_id, session_id=event.session_id,
                                       text="hello back"))


async def test_trace_continues_through_a_routed_service(settings, connection, tenant, tracer):
    class Echo(BusService):
        table = RouteTable("echo", (Route(subjects.chat_in(tenant), ChatMessageIn, echo, queue="echo"),))

        async def prepare(self, conn: EventConnection) -> EventConnection:
            return conn

    replies: asyncio.Queue = asyncio.Queue()

    async def on_reply(msg) -> None:
        await replies.put(msg)

    await connection.subscribe(subjects.chat_reply(tenant, "s-1"), on_reply)
    service = Echo(settings)
    await service.start()
    try:
        assert service.connection is not None
        await until_routed(service.connection.nc, connection.nc)
        with tracer.start_as_current_span("chat turn") as span:
            await connection.publish(subjects.chat_in(tenant), ChatMessageIn(tenant=tenant, session_id="s-1",
                                                                              token="tok", text="hi"))
        expected = format(span.get_span_context().trace_id, "032x")
        reply = await asyncio.wait_for(replies.get(), WAIT_S)
        assert trace_id_of(reply.headers["traceparent"]) == expected
    finally:
        await service.stop()
