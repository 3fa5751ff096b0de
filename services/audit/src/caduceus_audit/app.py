"""Wiring of the audit service: NATS, the event stream, the store, the durable consumer, checkpoints, health.

`build(settings)` makes the service; `start()` connects and becomes ready; `consume(stop)` runs the
fetch -> store -> ack -> checkpoint loop. Tests build and drive it exactly like `python -m caduceus_audit` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from caduceus_audit.adapters.store import AuditStore, StoreUnavailable
from caduceus_audit.adapters.stream import bind_audit_consumer, in_doubt
from caduceus_audit.checkpointing import Checkpointer
from caduceus_audit.handlers import AuditRecorder
from caduceus_audit.settings import AuditSettings
from caduceus_bus import EventConnection
from caduceus_contracts import AuditCheckpointed, Keyring, ensure_signer, subjects

log = logging.getLogger("caduceus_audit")

HEALTH_SUBJECT = "caduceus.health.audit"
# Pause after a bus error (server restarting, consumer gone) before fetching again.
BUS_RETRY_S = 1.0


@dataclass
class AuditService:
    """The audit consumer: every `cad.v1` event off JetStream into the store, acknowledged once committed."""

    settings: AuditSettings
    store: AuditStore
    recorder: AuditRecorder
    checkpointer: Checkpointer
    connection: EventConnection | None = None
    subscription: JetStreamContext.PullSubscription | None = None

    async def start(self, stop: asyncio.Event | None = None) -> None:
        """Connect, make sure the stream exists, wait for the database, bind the consumer, answer health."""
        self.connection = await EventConnection.connect(self.settings, "caduceus-audit")
        await self.connection.ensure_stream()
        await self._wait_for_store(stop or asyncio.Event())
        await asyncio.to_thread(self.checkpointer.load)
        await self._bind()
        await self._recover()
        await self.connection.nc.subscribe(HEALTH_SUBJECT, cb=_answer_health)
        log.info("audit ready: consumer %r on stream %s, store %s", "audit", self.settings.stream_name,
                 self.store.database.display_url)

    async def publish_checkpoint(self, event: AuditCheckpointed) -> None:
        """Put a checkpoint on the bus, where parties outside the database can keep it."""
        if self.connection is None:
            raise ConnectionError("the audit service is not connected to NATS")
        await self.connection.publish(subjects.audit_checkpoint(event.tenant), event)

    async def consume(self, stop: asyncio.Event) -> None:
        """Fetch, store and acknowledge batches, and checkpoint chains that are due, until `stop` is set."""
        while not stop.is_set():
            await self.step()
            await self.checkpointer.tick()

    async def step(self) -> int:
        """One fetch (waiting up to the fetch timeout) stored and acknowledged; returns how many messages."""
        return await self._record(await self._fetch())

    async def _fetch(self) -> list[Msg]:
        assert self.subscription is not None, "start() the service first"
        try:
            return await self.subscription.fetch(self.settings.audit_batch_size,
                                                 timeout=self.settings.audit_fetch_timeout_s)
        except TimeoutError:  # nothing to fetch (nats-py raises asyncio's TimeoutError, the builtin since 3.11)
            return []
        except nats.errors.Error as exc:
            log.warning("fetching from the event stream failed (%s); binding the consumer again", exc)
            await asyncio.sleep(BUS_RETRY_S)
            await self._rebind()
            return []

    async def _record(self, msgs: list[Msg]) -> int:
        if not msgs:
            return 0
        outcome = await self.recorder.record(msgs)
        self.checkpointer.appended(outcome.heads)
        if outcome.duplicates:
            log.info("stored %d events, %d already stored (redelivered or re-published)", outcome.stored,
                     outcome.duplicates)
        return len(msgs)

    async def close(self) -> None:
        """Disconnect and release the database. Messages fetched but not acknowledged are delivered again."""
        if self.subscription is not None:
            # A pull subscription never drains (nats-py keeps fetch status messages queued): drop it first.
            with contextlib.suppress(nats.errors.Error):
                await self.subscription.unsubscribe()
            self.subscription = None
        if self.connection is not None:
            await self.connection.close()
            self.connection = None
        self.store.close()

    async def _bind(self) -> None:
        assert self.connection is not None
        self.subscription = await bind_audit_consumer(
            self.connection.js, self.settings.stream_name,
            ack_wait_s=self.settings.audit_ack_wait_s,
        )

    async def _recover(self) -> None:
        assert self.connection is not None
        left = await in_doubt(self.connection.js, self.settings.stream_name)
        if left:
            outcome = await self.recorder.recover(left, self.settings.audit_batch_size)
            self.checkpointer.appended(outcome.heads)
            log.info("read back %d messages a previous run left unacknowledged: %d stored now, %d were stored",
                     len(left), outcome.stored, outcome.duplicates)

    async def _rebind(self) -> None:
        assert self.connection is not None
        try:
            if self.subscription is not None:
                with contextlib.suppress(nats.errors.Error):
                    await self.subscription.unsubscribe()
            await self.connection.ensure_stream()
            await self._bind()
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("binding the audit consumer failed (%s); will try again", exc)

    async def _wait_for_store(self, stop: asyncio.Event) -> None:
        delay = 0.2
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.store.ensure_schema)
                return
            except StoreUnavailable as exc:
                log.warning("audit database %s is unavailable (%s); retrying in %.1fs", self.store.database.display_url,
                            exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.audit_retry_max_s)


async def _answer_health(msg: Msg) -> None:
    await msg.respond(b"ok")


def build(settings: AuditSettings) -> AuditService:
    """The audit service for these settings (nothing is connected until start()).

    Makes the audit signing key in the keys dir on first use (`audit.key`, and `audit.pub` for verifiers).
    """
    store = AuditStore(settings.audit_db_url)
    signer = ensure_signer(settings.keys_dir, "audit")
    keyring = Keyring()
    keyring.trust("audit", signer.private_key.public_key())
    recorder = AuditRecorder(store, keyring, retry_max_s=settings.audit_retry_max_s)
    service = AuditService(settings, store, recorder, Checkpointer(
        store, signer, publish=lambda event: service.publish_checkpoint(event),
        every=settings.audit_checkpoint_every, interval_s=settings.audit_checkpoint_interval_s))
    return service
