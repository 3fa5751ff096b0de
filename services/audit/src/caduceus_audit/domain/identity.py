"""Which message a record keeps (pure): the id a record is stored under, so that the same message is stored
once and every other message is stored, even with the very same bytes.

A redelivery is the same stream position; a re-publish is the same event named again. A message
published with a `Nats-Msg-Id` (every Caduceus publisher sets it to the event id) is the event its
body names, so any re-publish of that event is stored once. A message without one was published
raw: it names no identity of its own, and is known by its place in the stream. So a brute force of
identical raw messages is kept as that many attempts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

MAX_MSG_ID = 128


def published_id(headers: Mapping[str, str] | None) -> str | None:
    """The id its publisher gave a message (`Nats-Msg-Id`), if any."""
    return (headers or {}).get("Nats-Msg-Id") or None


def event_record_id(event_id: str, headers: Mapping[str, str] | None, stream_seq: int) -> str:
    """The id a message that parsed as an event is stored under: its event id, at its stream position if raw."""
    return event_id if published_id(headers) else f"{event_id}@js{stream_seq}"


def rejected_record_id(data: bytes, headers: Mapping[str, str] | None, subject: str, stream_seq: int) -> str:
    """The id a rejected message is stored under, so its redelivery is stored once.

    The publisher's Nats-Msg-Id when there is one; otherwise the stream position and a digest of the
    content. The `rejected:` prefix keeps a malformed message from claiming a real event's id.
    """
    msg_id = published_id(headers)
    if msg_id:
        msg_id = msg_id if len(msg_id) <= MAX_MSG_ID else hashlib.sha256(msg_id.encode()).hexdigest()
        return f"rejected:{msg_id}"
    digest = hashlib.sha256(subject.encode() + b"\n" + data).hexdigest()[:32]
    return f"rejected:js{stream_seq}:{digest}"
