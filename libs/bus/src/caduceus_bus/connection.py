"""The one way every Caduceus process talks to the bus: a NATS connection that publishes contract events.

Publishing goes through JetStream with `Nats-Msg-Id` set to the event id, so a retried publish is stored
once, in a producer span of the current trace. A message a process cannot accept becomes an audited error
event (`refuse`), never a silent drop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, TypeVar

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import (
    ConnectionClosedError,
    ConnectionReconnectingError,
    NoRespondersError,
    StaleConnectionError,
)
from nats.js import JetStreamContext
from nats.js.errors import (
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue
from opentelemetry import trace

from caduceus_bus.connect import auth_options
from caduceus_bus.settings import BusSettings
from caduceus_bus.streams import ensure_stream
from caduceus_bus.tracing import inject_headers
from caduceus_contracts import ErrorEvent, Event, subjects

log = logging.getLogger(__name__)
tracer = trace.get_tracer("caduceus.bus")
RawHandler = Callable[[Msg], Awaitable[None]]
T = TypeVar("T")


def event_headers(event: Event, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    headers = {"Nats-Msg-Id": event.event_id, "Cad-Kind": event.kind}
    if extra:
        headers.update(extra)
    return inject_headers(headers)


def excerpt(body: bytes, limit: int = 256) -> str:
    """A short, printable excerpt of a refused body (never the whole thing: it may hold secrets)."""
    return body[:limit].decode("utf-8", "replace")


# What a publish meets while a cluster elects a new stream leader or the client moves to another node
# (nats' TimeoutError is a subclass of the builtin one).
RETRYABLE = (NoStreamResponseError, NoRespondersError, TimeoutError, ConnectionClosedError, StaleConnectionError,
             ConnectionReconnectingError)


async def publish_stored(js: JetStreamContext, subject: str, body: bytes, headers: dict[str, str],
                         settings: BusSettings) -> None:
    """Publish until JetStream confirms it stored the event, retrying for `publish_retry_s`.

    The Nats-Msg-Id header makes every retry of one event stored once (within the duplicate window).
    """
    deadline = time.monotonic() + settings.publish_retry_s
    delay = 0.05
    while True:
        try:
            await js.publish(subject, body, headers=headers, stream=settings.stream_name,
                             timeout=settings.publish_timeout_s)
            return
        except RETRYABLE as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.info("publish to %s not confirmed (%s); retrying", subject, type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


async def through_elections(operation: Callable[[], Awaitable[T]], within_s: float, what: str = "") -> T:
    """Run a JetStream operation (a KV read or write, say), again while it meets what a cluster electing a new
    leader answers (a timeout, no responders, JetStream unavailable), for up to `within_s`; then its error.

    For read-modify-write operations that are safe to repeat (a compare-and-set loop re-reads)."""
    deadline = time.monotonic() + within_s
    delay = 0.05
    while True:
        try:
            return await operation()
        except (*RETRYABLE, ServiceUnavailableError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.info("%s not answered (%s); trying again", what or "a JetStream operation", type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)


async def create_key(kv: KeyValue, key: str, value: bytes) -> int:
    """`kv.create(key, value)`: the new key's revision, or KeyWrongLastSequenceError when the key has a value,
    always (compare-and-set loops and leases read that as "another writer was first").

    nats-py's create answers the server's refusal by reading the key, to re-create one that was deleted. On a
    cluster that read is a direct get, which any replica serves: one that has not applied the other writer's value
    yet says KeyNotFoundError, though the server refused the create because the key has a value. Seen under load on
    a 3-node cluster as calls denied with "turn guardrails cannot be checked (KeyNotFoundError)".
    """
    try:
        return await kv.create(key, value)
    except KeyNotFoundError:
        raise KeyWrongLastSequenceError(f"{key} was created by another writer first") from None


async def settle(nc: Client) -> None:
    """Return once the server has processed everything this connection sent so far (subscriptions, unsubscribes,
    publishes), and this connection has read everything the server sent before that.

    nats-py's `flush()` alone does not promise it: it writes its PING straight to the socket, ahead of commands
    still buffered for its flusher task, so the PONG can come back before the server has seen a SUB, an UNSUB or
    the last PUBs (a stopping service then dropped the messages that arrived after its drain).
    """
    await nc._flush_pending(force_flush=True)  # private: the one way to wait until the buffer is written
    await nc.flush()


class Publisher(Protocol):
    """What handlers publish with: an EventConnection, or a BusService (which publishes on its connection)."""

    async def publish(self, subject: str, event: Event) -> None: ...

    async def refuse(self, subject: str, body: bytes, reason: str) -> None: ...


class EventConnection:
    """A process's connection: publishes contract events through JetStream, refuses bad input, subscribes.

    `role` names the process in the error events it publishes (`cad.v1.error.<tenant>.<role>`).
    """

    def __init__(self, nc: Client, settings: BusSettings, role: str = "client") -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=settings.publish_timeout_s)
        self.settings = settings
        self.role = role

    @classmethod
    async def connect(cls, settings: BusSettings, name: str, *, role: str = "client", connect_timeout: float = 5.0,
                      on_reconnect: Callable[[], Awaitable[None]] | None = None) -> "EventConnection":
        options: dict = {"name": name, "connect_timeout": connect_timeout, "max_reconnect_attempts": -1,
                         "allow_reconnect": True}
        if on_reconnect is not None:
            options["reconnected_cb"] = on_reconnect
        options.update(auth_options(settings))
        nc = await nats.connect(settings.nats_servers, **options)
        return cls(nc, settings, role)

    async def ensure_stream(self) -> None:
        await ensure_stream(self.js, self.settings.stream_name, self.settings.stream_replicas)

    async def publish(self, subject: str, event: Event) -> None:
        """Publish to JetStream and wait for the stream to store it, in a producer span of the current trace."""
        with tracer.start_as_current_span(f"{subject} publish", kind=trace.SpanKind.PRODUCER,
                                          attributes={"messaging.system": "nats", "messaging.destination.name": subject,
                                                      "messaging.operation.type": "publish",
                                                      "messaging.message.id": event.event_id}):
            await publish_stored(self.js, subject, event.model_dump_json().encode(), event_headers(event),
                                 self.settings)

    async def refuse(self, subject: str, body: bytes, reason: str) -> None:
        """Publish the error event for a message this process cannot accept (audited like any event)."""
        tenant = subjects.tenant_of(subject) or subjects.SYSTEM_TENANT
        error = ErrorEvent(tenant=tenant, service=self.role, subject=subject[:512], reason=reason[:1000],
                           excerpt=excerpt(body))
        log.warning("%s refused a message on %s: %s", self.role, subject, reason)
        await self.publish(subjects.error(tenant, self.role), error)

    async def subscribe(self, subject: str, handler: RawHandler, queue: str = "") -> Subscription:
        """A raw subscription, in place on the server when this returns (for clients and tests)."""
        subscription = await self.nc.subscribe(subject, queue=queue, cb=handler)
        await settle(self.nc)
        return subscription

    async def close(self) -> None:
        if not self.nc.is_closed:
            await self.nc.drain()
