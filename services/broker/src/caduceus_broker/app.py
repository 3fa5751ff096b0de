"""Wiring: the broker's subscribers, in one table."""

from __future__ import annotations

from faststream.nats import NatsBroker, NatsMessage

from caduceus_broker.handlers import BrokerHandlers
from caduceus_broker.settings import BrokerSettings, ModelSettings
from caduceus_broker.workers import WorkerPool
from caduceus_bus import (
    EVENT_SUBSCRIBER,
    BusSettings,
    EventPublisher,
    ensure_event_stream,
    make_broker,
)
from caduceus_contracts import subjects

SERVICE = "broker"


class BrokerApp:
    """The broker service: `await start()`, then it serves until `await stop()`."""

    def __init__(self, settings: BrokerSettings, bus: BusSettings, model: ModelSettings) -> None:
        self.settings = settings
        self.bus = bus
        self.model = model
        self.broker: NatsBroker = make_broker(bus, SERVICE)
        self.handlers: BrokerHandlers | None = None
        self._subscribe()

    def _subscribe(self) -> None:
        routes = {
            subjects.TURN_REQUESTED_ALL: "on_turn_requested",
            subjects.TOOL_REQUESTED_ALL: "on_tool_requested",
            subjects.TOOL_DECIDED_ALL: "on_tool_decided",
            subjects.TOOL_COMPLETED_ALL: "on_tool_completed",
        }
        for subject, name in routes.items():
            self.broker.subscriber(subject, queue=SERVICE, max_workers=16, **EVENT_SUBSCRIBER)(self._route_to(name))
        # Replies close the turns a worker has in flight; every broker instance tracks its own workers.
        self.broker.subscriber(subjects.CHAT_REPLY_ALL, max_workers=16, **EVENT_SUBSCRIBER)(
            self._route_to("on_chat_reply"))

        @self.broker.subscriber(f"caduceus.health.{SERVICE}")
        async def health(msg: NatsMessage) -> bytes:
            return b"ok"

    def _route_to(self, name: str):
        # A closure, not a default argument: FastStream would fill any extra parameter from the message body.
        async def subscriber(msg: NatsMessage) -> None:
            await getattr(self.handlers, name)(msg.raw_message.subject, msg.body)

        return subscriber

    async def start(self) -> None:
        await self.broker.connect()
        await ensure_event_stream(self.broker, self.bus)
        publisher = EventPublisher(self.broker, self.bus, SERVICE)
        pool = WorkerPool(self.settings, self.bus, self.model, self.broker.config.connection_state.connection,
                          self._report_worker)
        self.handlers = BrokerHandlers(publisher, pool, self.settings.keys, self.settings.decision_timeout_s)
        await self.broker.start()

    async def _report_worker(self, *args) -> None:
        assert self.handlers is not None
        await self.handlers.report_worker(*args)

    async def stop(self) -> None:
        if self.handlers is not None:
            await self.handlers.pool.stop_all()
        await self.broker.stop()
