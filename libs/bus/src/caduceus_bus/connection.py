"""A plain nats-py connection for processes that are not FastStream apps: workers, clients, tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from caduceus_bus.connect import auth_options
from caduceus_bus.events import event_headers
from caduceus_bus.settings import BusSettings
from caduceus_bus.streams import ensure_stream
from caduceus_contracts import Event

RawHandler = Callable[[Msg], Awaitable[None]]


class EventConnection:
    """Publishes contract events through JetStream and subscribes to subjects."""

    def __init__(self, nc: Client, settings: BusSettings) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=settings.publish_timeout_s)
        self.settings = settings

    @classmethod
    async def connect(cls, settings: BusSettings, name: str, *, connect_timeout: float = 5.0) -> "EventConnection":
        options: dict = {"name": name, "connect_timeout": connect_timeout, "max_reconnect_attempts": -1,
                         "allow_reconnect": True}
        options.update(auth_options(settings))
        nc = await nats.connect(settings.nats_url, **options)
        return cls(nc, settings)

    async def ensure_stream(self) -> None:
        await ensure_stream(self.js, self.settings.stream_name)

    async def publish(self, subject: str, event: Event) -> None:
        await self.js.publish(subject, event.model_dump_json().encode(), headers=event_headers(event),
                              timeout=self.settings.publish_timeout_s)

    async def subscribe(self, subject: str, handler: RawHandler, queue: str = "") -> Subscription:
        return await self.nc.subscribe(subject, queue=queue, cb=handler)

    async def close(self) -> None:
        if not self.nc.is_closed:
            await self.nc.drain()
