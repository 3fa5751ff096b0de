"""Messages off the stream in, audit records out: store a batch, and only then acknowledge it.

Nothing is acknowledged before it is committed. While the store is unavailable
the batch is held (and JetStream told it is still being worked on), retried with
backoff, and consumption pauses; a crash at any point leaves the messages
unacknowledged, so they are read back at the next start (and delivered again
later), and stored once.

Checkpoint events (`cad.v1.audit.checkpoint.<tenant>`) are the audit service's own
output: a valid one is kept in the checkpoint table, never appended to a chain,
because a chained checkpoint would be a new record calling for another checkpoint,
forever. One that is not signed by the audit key is an attempt to vouch for a
history, and is kept as a rejected record like any other bad message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from nats.aio.msg import Msg

from caduceus_audit.adapters.store import (
    AppendOutcome,
    AuditStore,
    StoreRefused,
    StoreUnavailable,
)
from caduceus_audit.adapters.stream import CONSUMER_NAME, StreamMessage
from caduceus_audit.checkpointing import Checkpointer
from caduceus_audit.domain.entries import AuditEntry, entry_for_message, rejected_entry
from caduceus_audit.usage import UsageRow, usage_report
from caduceus_bus import Delivery, Pull, Route, RouteTable
from caduceus_contracts import (
    AuditCheckpointed,
    ContractError,
    Keyring,
    SignatureError,
    UsageAnswer,
    UsageQuery,
    UsageTotals,
    parse_event,
    subjects,
)

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


CHECKPOINT_PREFIX = subjects.AUDIT_CHECKPOINT_ALL.removesuffix("*")


def is_checkpoint(subject: str) -> bool:
    return subject.startswith(CHECKPOINT_PREFIX)


def checkpoint_or_entry(message: StreamMessage, keyring: Keyring) -> AuditCheckpointed | AuditEntry:
    """A checkpoint signed by the audit key, or the rejected entry recording a checkpoint that is not."""
    try:
        event = parse_event(message.data, expect=AuditCheckpointed, subject=message.subject)
        assert isinstance(event, AuditCheckpointed)
        event.checkpoint.verify(keyring)
        return event
    except (ContractError, SignatureError) as exc:
        return rejected_entry(message.subject, message.data, message.headers,
                              f"not a checkpoint signed by the audit service: {exc}",
                              stream_seq=message.stream_seq, received_at=message.published_at)
    except Exception as exc:  # a signature that is not even well-formed, or a fault: kept, never raised
        log.exception("audit could not check the checkpoint at stream position %s", message.stream_seq)
        return rejected_entry(message.subject, message.data, message.headers,
                              f"not a checkpoint audit could check ({type(exc).__name__})",
                              stream_seq=message.stream_seq, received_at=message.published_at)


@dataclass(frozen=True)
class Intake:
    """What a batch of stream messages becomes: chain entries, and checkpoints to keep beside the chains."""

    entries: list[AuditEntry] = field(default_factory=list)
    checkpoints: list[AuditCheckpointed] = field(default_factory=list)


def intake_for(messages: Sequence[StreamMessage], keyring: Keyring) -> Intake:
    intake = Intake()
    for message in messages:
        item = checkpoint_or_entry(message, keyring) if is_checkpoint(message.subject) else entry_for(message)
        (intake.checkpoints if isinstance(item, AuditCheckpointed) else intake.entries).append(item)
    return intake


@dataclass
class AuditRecorder:
    """Stores fetched messages in the audit store, then acknowledges them."""

    store: AuditStore
    keyring: Keyring = field(default_factory=Keyring)
    retry_max_s: float = 10.0

    async def record(self, msgs: Sequence[Msg]) -> AppendOutcome:
        """Store a batch (waiting out an unavailable store), then acknowledge every message of it."""
        # Redaction and canonical JSON take real CPU time: keep them off the event loop.
        intake = await asyncio.to_thread(intake_for, [StreamMessage.delivered(msg) for msg in msgs], self.keyring)
        await self._keep_checkpoints(msgs, intake.checkpoints)
        outcome = await self._store(msgs, intake.entries)
        for msg in msgs:
            with contextlib.suppress(Exception):
                # A lost ack only means a redelivery, which the store recognises by event id.
                await msg.ack()
        return outcome

    async def recover(self, messages: Sequence[StreamMessage], batch_size: int) -> AppendOutcome:
        """Store messages read back from the stream (nothing to acknowledge: JetStream redelivers them later)."""
        stored = duplicates = 0
        heads: dict[str, int] = {}
        for start in range(0, len(messages), batch_size):
            intake = await asyncio.to_thread(intake_for, messages[start:start + batch_size], self.keyring)
            await self._keep_checkpoints((), intake.checkpoints)
            outcome = await self._store((), intake.entries)
            stored, duplicates = stored + outcome.stored, duplicates + outcome.duplicates
            heads.update(outcome.heads)
        return AppendOutcome(stored=stored, duplicates=duplicates, heads=heads)

    async def _keep_checkpoints(self, msgs: Sequence[Msg], checkpoints: list[AuditCheckpointed]) -> None:
        delay = FIRST_RETRY_S
        for checkpoint in checkpoints:
            while True:
                try:
                    # Already there when it is our own: it was stored before it was published.
                    await asyncio.to_thread(self.store.checkpoints.add, checkpoint, published=True)
                    break
                except StoreRefused as exc:
                    # The stream keeps it: `caduceus audit verify --bus` still reads it from there.
                    log.error("audit store refused checkpoint %s (%s); it stays on the stream only",
                              checkpoint.event_id, exc)
                    break
                except StoreUnavailable as exc:
                    log.warning("audit store unavailable (%s): holding a checkpoint unacknowledged", exc)
                    await _still_working(msgs)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.retry_max_s)

    async def _store(self, msgs: Sequence[Msg], entries: list[AuditEntry]) -> AppendOutcome:
        if not entries:
            return AppendOutcome(stored=0, duplicates=0)
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
        heads: dict[str, int] = {}
        for entry in entries:
            outcome = await self._store(msgs, [entry])
            stored, duplicates = stored + outcome.stored, duplicates + outcome.duplicates
            heads.update(outcome.heads)
        return AppendOutcome(stored=stored, duplicates=duplicates, heads=heads)


async def _still_working(msgs: Sequence[Msg]) -> None:
    # Resets JetStream's ack timer, so a held batch is not redelivered while the store is down.
    for msg in msgs:
        with contextlib.suppress(Exception):
            await msg.in_progress()


@dataclass
class AuditIntake:
    """What audit's route needs: the recorder, the checkpointer, and one lock so a checkpoint never signs a head
    while a batch is being appended behind it."""

    recorder: AuditRecorder
    checkpointer: Checkpointer
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def checkpoint_due(self) -> None:
        async with self.lock:
            await self.checkpointer.tick()


async def store_batch(intake: AuditIntake, batch: list[Delivery]) -> None:
    """Store a batch of stream messages (malformed ones as rejected records), acknowledge it, checkpoint."""
    async with intake.lock:
        outcome = await intake.recorder.record([delivery.msg for delivery in batch if delivery.msg is not None])
        intake.checkpointer.appended(outcome.heads)
        if outcome.duplicates:
            log.info("stored %d events, %d already stored (redelivered or re-published)", outcome.stored,
                     outcome.duplicates)
        await intake.checkpointer.tick()


def _folded(rows: list[UsageRow], by: tuple[str, ...]) -> tuple[UsageTotals, ...]:
    """Rows grouped more finely, summed into groups of `by` (ordered by key, as `usage_report` orders them)."""
    groups: dict[tuple[str, ...], UsageRow] = {}
    for row in rows:
        key = {dimension: row.key[dimension] for dimension in by}
        group = groups.setdefault(tuple(key.values()), UsageRow(key))
        group.prompt_tokens += row.prompt_tokens
        group.completion_tokens += row.completion_tokens
        group.cost_usd += row.cost_usd
        group.calls += row.calls
        group.refusals += row.refusals
    return tuple(UsageTotals(key=group.key, **{k: v for k, v in group.as_dict().items() if k not in group.key})
                 for _, group in sorted(groups.items()))


def usage_answer(store: AuditStore, query: UsageQuery) -> UsageAnswer:
    """The query's tenant's usage, the numbers `caduceus usage --json` prints for the same store and options, and
    (when asked) its days: both from one pass over the trail."""
    finest = query.by if not query.days or "day" in query.by else (*query.by, "day")
    report = usage_report(store, by=finest, tenant=query.tenant, since=query.since)
    return UsageAnswer(rows=_folded(report.rows, query.by),
                       days=_folded(report.rows, ("day",)) if query.days else ())


async def answer_usage(store: AuditStore, msg: Msg) -> None:
    """Answer a usage question about the tenant of its subject only; a question about another tenant, or one
    that does not parse, gets a problem and no numbers (the asker reads it as unavailable: fail closed)."""
    try:
        query = UsageQuery.model_validate_json(msg.data)
        if msg.subject != subjects.audit_usage(query.tenant):
            answer = UsageAnswer(problem=f"a usage question about {query.tenant!r} asked on {msg.subject!r}")
        else:
            answer = await asyncio.to_thread(usage_answer, store, query)
    except StoreUnavailable as exc:
        answer = UsageAnswer(problem=f"the audit store is unavailable: {exc}")
    except Exception as exc:
        log.warning("usage question refused: %s", exc)
        answer = UsageAnswer(problem=f"usage question refused ({type(exc).__name__})")
    with contextlib.suppress(Exception):
        await msg.respond(answer.model_dump_json().encode())


# Every `cad.v1` event, from the durable consumer `audit`, in stream order: stored, then acknowledged. A message
# that does not parse is delivered too, and kept as a rejected record; stored messages are read back by
# position when a previous run left some unacknowledged.
ROUTES = RouteTable(
    role="audit",
    routes=(
        Route(subjects.ALL, None, store_batch, delivery=Pull(CONSUMER_NAME, batch=500, reads_back=True),
              malformed="deliver"),
    ),
    publishes=(subjects.AUDIT_EVENTS,),
    grants=("stream-setup",),
    # Requests answered by app.py: one tenant's model usage (asked by the approval UI for a tenant admin).
    extra_subscribes=(subjects.AUDIT_USAGE_ALL,),
)
