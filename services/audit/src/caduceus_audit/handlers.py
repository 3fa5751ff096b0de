"""Messages off the stream in, audit records out: store a batch, and only then acknowledge it.

Nothing is acknowledged before it is committed. While the store is unavailable
the batch is held (and JetStream told it is still being worked on), retried with
backoff, and consumption pauses; a crash at any point leaves the messages
unacknowledged, so they are read back at the next start (and delivered again
later), and stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from nats.aio.msg import Msg

from caduceus_audit.adapters.store import (
    AppendOutcome,
    AuditStore,
    StoreRefused,
    StoreUnavailable,
)
from caduceus_audit.adapters.stream import StreamMessage
from caduceus_audit.domain.entries import AuditEntry, entry_for_message, rejected_entry

log = logging.getLogger(__name__)

FIRST_RETRY_S = 0.2


def entry_for(message: StreamMessage) -> AuditEntry:
    """The audit entry for one stream message. Never raises: what cannot be read is kept as rejected."""
    try:
        return entry_for_message(message.subject, message.data, message.headers, stream_seq=message.stream_seq,
                                 received_at=message.published_at)
    except Exception as exc:  # a fault in reading one message must not stall the whole trail
        log.exception("audit could not read the message at stream position %s on %s", message.stream_seq,
                      message.subject)
        return rejected_entry(message.subject, b"", message.headers,
                              f"audit could not read this message ({type(exc).__name__})",
                              stream_seq=message.stream_seq, received_at=message.published_at)


def entries_for(messages: Sequence[StreamMessage]) -> list[AuditEntry]:
    return [entry_for(message) for message in messages]


@dataclass
class AuditRecorder:
    """Stores fetched messages in the audit store, then acknowledges them."""

    store: AuditStore
    retry_max_s: float = 10.0

    async def record(self, msgs: Sequence[Msg]) -> AppendOutcome:
        """Store a batch (waiting out an unavailable store), then acknowledge every message of it."""
        # Redaction and canonical JSON take real CPU time: keep them off the event loop.
        entries = await asyncio.to_thread(entries_for, [StreamMessage.delivered(msg) for msg in msgs])
        outcome = await self._store(msgs, entries)
        for msg in msgs:
            with contextlib.suppress(Exception):
                # A lost ack only means a redelivery, which the store recognises by event id.
                await msg.ack()
        return outcome

    async def recover(self, messages: Sequence[StreamMessage], batch_size: int) -> AppendOutcome:
        """Store messages read back from the stream (nothing to acknowledge: JetStream redelivers them later)."""
        stored = duplicates = 0
        for start in range(0, len(messages), batch_size):
            entries = await asyncio.to_thread(entries_for, messages[start:start + batch_size])
            outcome = await self._store((), entries)
            stored, duplicates = stored + outcome.stored, duplicates + outcome.duplicates
        return AppendOutcome(stored=stored, duplicates=duplicates)

    async def _store(self, msgs: Sequence[Msg], entries: list[AuditEntry]) -> AppendOutcome:
        delay, withheld = FIRST_RETRY_S, False
        while True:
            try:
                return await asyncio.to_thread(self.store.append_batch, entries)
            except StoreUnavailable as exc:
                log.warning("audit store unavailable (%s): holding %d messages unacknowledged, retrying in %.1fs",
                            exc, len(msgs), delay)
            except StoreRefused as exc:
                if len(entries) > 1:
                    return await self._store_one_by_one(msgs, entries)
                if not withheld:
                    log.error("audit store refused event %s (%s): keeping it with its body withheld",
                              entries[0].event_id, exc)
                    entries, withheld = [entries[0].as_unstorable(str(exc))], True
                    continue
                log.error("audit store refused even a withheld record (%s); retrying in %.1fs", exc, delay)
            await _still_working(msgs)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max_s)

    async def _store_one_by_one(self, msgs: Sequence[Msg], entries: list[AuditEntry]) -> AppendOutcome:
        # The store refused the batch: find the one entry it will not take, keep everything else as it is.
        stored = duplicates = 0
        for entry in entries:
            outcome = await self._store(msgs, [entry])
            stored, duplicates = stored + outcome.stored, duplicates + outcome.duplicates
        return AppendOutcome(stored=stored, duplicates=duplicates)


async def _still_working(msgs: Sequence[Msg]) -> None:
    # Resets JetStream's ack timer, so a held batch is not redelivered while the store is down.
    for msg in msgs:
        with contextlib.suppress(Exception):
            await msg.in_progress()
