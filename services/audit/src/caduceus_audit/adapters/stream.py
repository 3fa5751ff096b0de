"""The audit service's durable JetStream pull consumer on the event stream, and what it left in doubt."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RawStreamMsg
from nats.js.errors import NotFoundError

from caduceus_contracts import subjects

CONSUMER_NAME = "audit"


@dataclass(frozen=True)
class StreamMessage:
    """One message of the event stream, however it was obtained (delivered by the consumer, or read back)."""

    subject: str
    data: bytes
    headers: Mapping[str, str] | None
    stream_seq: int
    published_at: datetime

    @classmethod
    def delivered(cls, msg: Msg) -> "StreamMessage":
        meta = msg.metadata
        return cls(msg.subject, msg.data, msg.headers, meta.sequence.stream, meta.timestamp or datetime.now(UTC))

    @classmethod
    def read(cls, raw: RawStreamMsg) -> "StreamMessage":
        return cls(raw.subject or "", raw.data or b"", raw.headers, raw.seq or 0, raw.time or datetime.now(UTC))


def consumer_config(*, ack_wait_s: float) -> ConsumerConfig:
    """Every `cad.v1` event from the start of the stream, each acknowledged explicitly once stored."""
    return ConsumerConfig(
        name=CONSUMER_NAME,
        durable_name=CONSUMER_NAME,
        filter_subject=subjects.ALL,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait_s,
        max_deliver=-1,
    )


async def bind_audit_consumer(js: JetStreamContext, stream: str, *,
                              ack_wait_s: float) -> JetStreamContext.PullSubscription:
    """Create or update the durable `audit` consumer and return a pull subscription bound to it."""
    await js.add_consumer(stream, consumer_config(ack_wait_s=ack_wait_s))
    return await js.pull_subscribe_bind(durable=CONSUMER_NAME, stream=stream)


async def in_doubt(js: JetStreamContext, stream: str) -> list[StreamMessage]:
    """Messages the consumer delivered but that were never acknowledged (a previous run died holding them).

    Read back from the stream in stream order, so they can be stored before anything newer: JetStream
    would only redeliver them after the ack wait, behind newer messages, and the chains would lose
    stream order. Ones that were in fact stored are recognised by event id.
    """
    info = await js.consumer_info(stream, CONSUMER_NAME)
    if not info.num_ack_pending or info.ack_floor is None or info.delivered is None:
        return []
    messages = []
    for seq in range(info.ack_floor.stream_seq + 1, info.delivered.stream_seq + 1):
        try:
            messages.append(StreamMessage.read(await js.get_msg(stream, seq)))
        except NotFoundError:
            continue  # removed by the stream's limits, or acknowledged and gone
    return messages
