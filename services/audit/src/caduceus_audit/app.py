"""Wiring of the audit service: the store, the checkpointer and the recovery of what a previous run left in
doubt, around the route table in handlers.py (one durable pull consumer of every `cad.v1` event).

`build(settings)` makes the service; `start()` connects, waits for the database, recovers, and consumes until
`stop()`. Tests build and drive it exactly like `python -m caduceus_audit` does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

from nats.js.errors import NotFoundError
from prometheus_client import Counter, Gauge

from caduceus_audit.adapters.store import AuditStore, StoreUnavailable
from caduceus_audit.adapters.stream import CONSUMER_NAME, in_doubt
from caduceus_audit.checkpointing import Checkpointer
from caduceus_audit.handlers import ROUTES, AuditIntake, AuditRecorder, answer_usage
from caduceus_audit.settings import AuditSettings
from caduceus_bus import BusService, EventConnection, Pull
from caduceus_contracts import AuditCheckpointed, ErrorEvent, Keyring, ensure_signer, subjects

log = logging.getLogger("caduceus_audit")

HEALTH_SUBJECT = ROUTES.health_subject
LAG = Gauge("caduceus_audit_lag_events", "Events in the stream the audit trail has not stored yet")
STALLS = Counter("caduceus_audit_stalls_total", "Times audit found itself not storing waiting events and restarted "
                 "its consumer")


class AuditService(BusService):
    """The audit consumer: every `cad.v1` event off JetStream into the store, acknowledged once committed."""

    table = ROUTES

    def __init__(self, settings: AuditSettings, store: AuditStore, recorder: AuditRecorder,
                 checkpointer: Checkpointer) -> None:
        super().__init__(settings)
        self.settings = settings
        self.store = store
        self.recorder = recorder
        self.checkpointer = checkpointer
        self.intake = AuditIntake(recorder, checkpointer)
        self._database_problem: str | None = None
        self._prepared = False
        self.routes = self.routes.tuned(subjects.ALL, delivery=Pull(
            CONSUMER_NAME, batch=settings.audit_batch_size, ack_wait_s=settings.audit_ack_wait_s,
            fetch_timeout_s=settings.audit_fetch_timeout_s, reads_back=True))

    async def prepare(self, connection: EventConnection) -> AuditIntake:
        """Wait for the database, load chain heads, store what a previous run left unacknowledged, then consume."""
        await self._wait_for_store()
        await asyncio.to_thread(self.checkpointer.load)
        await self._recover(connection)
        self.background(self._checkpoint_when_due(), "audit-checkpoints")
        self.background(self._measure_lag(connection), "audit-lag-and-stalls")
        await connection.nc.subscribe(subjects.AUDIT_USAGE_ALL, queue="audit", cb=partial(answer_usage, self.store))
        self._prepared = True
        log.info("audit ready: consumer %r on stream %s, store %s", CONSUMER_NAME, self.settings.stream_name,
                 self.store.database.display_url)
        return self.intake

    async def publish_checkpoint(self, event: AuditCheckpointed) -> None:
        """Put a checkpoint on the bus, where parties outside the database can keep it."""
        await self.publish(subjects.audit_checkpoint(event.tenant), event)

    async def cleanup(self) -> None:
        """Sign the head of every chain with unsigned records (so a tail deleted after the stop is detected), then
        release the database. Messages fetched but not acknowledged are delivered again."""
        try:
            if self._prepared:  # the store answered at start: there is something to sign
                async with self.intake.lock:
                    await self.checkpointer.seal()
        finally:
            self.store.close()

    async def _checkpoint_when_due(self) -> None:
        """Checkpoints due by time, when no batch arrives to trigger them (as often as an idle fetch returns)."""
        while True:
            await asyncio.sleep(self.settings.audit_fetch_timeout_s)
            await self.intake.checkpoint_due()

    async def _measure_lag(self, connection: EventConnection) -> None:
        """How many events the stream holds that are not stored yet, whether the database answers, and whether
        storing has stalled: events waiting while nothing is acknowledged for `audit_stall_after_s`, the database
        answering all the while. A stall restarts the pull loop (its consumer bound afresh), said in the log and
        in an audited error event."""
        every_s = min(5.0, self.settings.audit_stall_after_s / 4)
        progress: tuple[int, int] | None = None
        since = time.monotonic()
        while True:
            lag: int | None = None
            try:
                info = await connection.js.consumer_info(self.settings.stream_name, CONSUMER_NAME)
                lag = info.num_pending + info.num_ack_pending
                LAG.set(lag)
            except Exception as exc:  # the consumer is made by the route: not there in the first moments
                log.debug("audit lag unknown: %s", exc)
            try:
                await asyncio.to_thread(self.store.database.ping)
                self._database_problem = None
            except StoreUnavailable as exc:
                self._database_problem = f"the audit database is unavailable: {exc}"
            now = time.monotonic()
            if lag is not None:
                # Progress: acknowledged or newly delivered (to any replica).
                seen = (info.ack_floor.stream_seq if info.ack_floor else 0,
                        info.delivered.stream_seq if info.delivered else 0)
                if not lag or seen != progress or self._database_problem is not None:
                    progress, since = seen, now  # storing, idle, or waiting for the database: not a stall
                elif now - since >= self.settings.audit_stall_after_s:
                    await self._recover_from_stall(lag, now - since)
                    since = now
            await asyncio.sleep(every_s)

    async def _recover_from_stall(self, lag: int, stalled_s: float) -> None:
        reason = (f"audit stalled: {lag} events in the stream not stored and nothing acknowledged for "
                  f"{stalled_s:.0f}s while the database answered; restarting its consumer")
        log.warning("%s", reason)
        STALLS.inc()
        if self.router is not None:
            self.router.restart_pulls(reason)
        try:
            await self.publish(subjects.error(subjects.SYSTEM_TENANT, ROUTES.role),
                               ErrorEvent(tenant=subjects.SYSTEM_TENANT, service=ROUTES.role, subject=subjects.ALL,
                                          reason=reason))
        except Exception as exc:  # the log line stands; the bus may be what is wrong
            log.warning("could not publish the stall event: %s", exc)

    def readiness(self) -> dict[str, str | None]:
        return {**super().readiness(), "database": self._database_problem}

    async def _recover(self, connection: EventConnection) -> None:
        try:
            left = await in_doubt(connection.js, self.settings.stream_name)
        except NotFoundError:
            return  # the first start: no consumer yet, so nothing was left
        if left:
            outcome = await self.recorder.recover(left, self.settings.audit_batch_size)
            self.checkpointer.appended(outcome.heads)
            log.info("read back %d messages a previous run left unacknowledged: %d stored now, %d were stored",
                     len(left), outcome.stored, outcome.duplicates)

    async def _wait_for_store(self) -> None:
        delay = 0.2
        while True:
            try:
                await asyncio.to_thread(self.store.ensure_schema)
                return
            except StoreUnavailable as exc:
                log.warning("audit database %s is unavailable (%s); retrying in %.1fs", self.store.database.display_url,
                            exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.audit_retry_max_s)


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
