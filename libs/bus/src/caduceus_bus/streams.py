"""The JetStream stream that keeps every `cad.v1` event (the audit plane reads it)."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import BadRequestError

from caduceus_contracts import subjects

# A retried publish with the same Nats-Msg-Id inside this window is stored once.
DUPLICATE_WINDOW_S = 600.0


def stream_config(name: str) -> StreamConfig:
    return StreamConfig(
        name=name,
        subjects=[subjects.ALL],
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_S,
    )


async def ensure_stream(js: JetStreamContext, name: str) -> None:
    """Create the event stream, or bring an existing one to the expected config."""
    config = stream_config(name)
    try:
        await js.add_stream(config)
    except BadRequestError:
        await js.update_stream(config)
