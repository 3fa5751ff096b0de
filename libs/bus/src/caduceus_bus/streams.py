"""The JetStream stream that keeps every `cad.v1` event (the audit plane reads it)."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import BadRequestError, BucketNotFoundError
from nats.js.kv import KeyValue

from caduceus_contracts import subjects

# A retried publish with the same Nats-Msg-Id inside this window is stored once.
DUPLICATE_WINDOW_S = 600.0


def stream_config(name: str, replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=name,
        subjects=[subjects.ALL],
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_S,
        num_replicas=replicas,
    )


async def ensure_stream(js: JetStreamContext, name: str, replicas: int = 1) -> None:
    """Create the event stream, or bring an existing one to the expected config (its replicas included)."""
    config = stream_config(name, replicas)
    try:
        await js.add_stream(config)
    except BadRequestError:
        await js.update_stream(config)


async def open_bucket(js: JetStreamContext, bucket: str, *, max_age_s: float = 0, history: int = 1,
                      replicas: int = 1) -> KeyValue:
    """A KV bucket, created on first use at `replicas` copies (replicas of a service may race to create it: fine)."""
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        config = KeyValueConfig(bucket=bucket, history=history, storage=StorageType.FILE, ttl=max_age_s or None,
                                replicas=replicas)
        try:
            return await js.create_key_value(config)
        except Exception:
            return await js.key_value(bucket)  # another process created it first
