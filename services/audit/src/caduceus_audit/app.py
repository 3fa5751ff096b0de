"""Wiring of the audit service: NATS, the event stream, the store, the durable consumer, health.

`build(settings)` makes the service; `start()` connects and becomes ready; `consume(stop)` runs the
fetch -> store -> ack loop. Tests build and drive it exactly like `python -m caduceus_audit` does.
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
from caduceus_audit.handlers import AuditRecorder
from caduceus_audit.settings import AuditSettings
from caduceus_bus import EventConnection

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
    connection: EventConnection | None = None
    subscription: JetStreamContext.PullSubscription | None = None

    async def start(self, stop: asyncio.Event | None = None) -> None:
        """Connect, make sure the stream exists, wait for the database, bind the consumer, answer health."""
        self.connection = await EventConnection.connect(self.settings, "caduceus-audit")
        await self.connection.ensure_stream()
        await self._wait_for_store(stop or asyncio.Event())
        await self._bind()
        await self._recover()
        await self.connection.nc.subscribe(HEALTH_SUBJECT, cb=_answer_health)
        log.info("audit ready: consumer %r on stream %s, store %s", "audit", self.settings.stream_name,
                 self.store.url.render_as_string(hide_password=True))

    async def consume(self, stop: asyncio.Event) -> None:
        """Fetch, store and acknowledge batches until `stop` is set."""
        while not stop.is_set():
            await self.step()

    async def step(self) -> int:
        """One fetch (waiting up to the fetch timeout) stored and acknowledged; returns how many messages."""
        assert self.subscription is not None, "start() the service first"
        try:
            msgs = await self.subscription.fetch(self.settings.audit_batch_size,
                                                 timeout=self.settings.audit_fetch_timeout_s)
        except TimeoutError:  # nothing to fetch (nats-py raises asyncio's TimeoutError, the builtin since 3.11)
            return 0
        except nats.errors.Error as exc:
            log.warning("fetching from the event stream failed (%s); binding the consumer again", exc)
            await asyncio.sleep(BUS_RETRY_S)
            await self._rebind()
            return 0
        outcome = await self.recorder.record(msgs)
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
                log.warning("audit database %s is unavailable (%s); retrying in %.1fs",
                            self.store.url.render_as_string(hide_password=True), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.audit_retry_max_s)


async def _answer_health(msg: Msg) -> None:
    await msg.respond(b"ok")


def build(settings: AuditSettings) -> AuditService:
    """The audit service for these settings (nothing is connected until start())."""
    store = AuditStore(settings.audit_db_url)
    return AuditService(settings, store, AuditRecorder(store, retry_max_s=settings.audit_retry_max_s))
