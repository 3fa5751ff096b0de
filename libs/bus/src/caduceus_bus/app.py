"""One place that builds a service's broker: connection, telemetry middleware, stream."""

from __future__ import annotations

import logging

from faststream.message import StreamMessage
from faststream.nats import NatsBroker
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from opentelemetry import trace

from caduceus_bus.connect import auth_options
from caduceus_bus.settings import BusSettings
from caduceus_bus.streams import ensure_stream


def make_broker(settings: BusSettings, service: str) -> NatsBroker:
    """A FastStream NATS broker for one service, with trace context carried in headers."""
    return NatsBroker(
        settings.nats_url,
        name=f"caduceus-{service}",
        middlewares=(NatsTelemetryMiddleware(tracer_provider=trace.get_tracer_provider()),),
        max_reconnect_attempts=-1,
        # Handler failures are logged (as errors with a traceback); per-message chatter only at DEBUG.
        logger=logging.getLogger(f"caduceus.{service}.bus"),
        log_level=logging.DEBUG,
        **auth_options(settings),
    )


async def ensure_event_stream(broker: NatsBroker, settings: BusSettings) -> None:
    await ensure_stream(broker.config.connection_state.stream, settings.stream_name)  # type: ignore[attr-defined]


async def raw_body(msg: StreamMessage) -> bytes:
    """Hand the body over undecoded: the contracts parse it, so a lying content-type cannot drop a message."""
    return msg.body


# Options for every subscriber of contract events. no_reply: a JetStream publish is a request, and an automatic
# empty reply could reach the publisher as its ack. decoder: see raw_body.
EVENT_SUBSCRIBER = {"no_reply": True, "decoder": raw_body}
