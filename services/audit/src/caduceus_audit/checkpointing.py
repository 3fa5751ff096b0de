"""Signing each chain's head (every tenant's, and the system chain's): every N records or T seconds, stored
first, then published on the bus.

A checkpoint is committed to the checkpoint table before it is published, and
marked published only once JetStream confirmed it; one that could not be
published (bus down, service stopped) is published at the next tick. Its event
id is derived from (tenant, seq), so a re-publish is stored once.

On a graceful stop (`seal`), every chain with unsigned records is signed whether due or not, so
records deleted from a chain's tail after the stop are caught by `caduceus audit verify` (truncated).
Replicas sharing one database each sign what they see: a checkpoint starts after the last one stored
by any replica, so they tile the chain rather than overlap.

Checkpoint events come back to the audit consumer like every `cad.v1` event; they
are kept in the checkpoint table, never appended to a chain (see handlers), so
a checkpoint never causes another one: an idle trail stays idle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from prometheus_client import Counter

from caduceus_audit.adapters.store import AuditStore, StoreRefused, StoreUnavailable
from caduceus_audit.domain.checkpoints import ChainDamaged, checkpoint_due, checkpoint_for
from caduceus_contracts import AuditCheckpointed, SignedCheckpoint, Signer, utcnow

log = logging.getLogger(__name__)
CHECKPOINTS = Counter("caduceus_audit_checkpoints_total", "Chain heads signed (checkpoints made), by chain", ["chain"])

Publish = Callable[[AuditCheckpointed], Awaitable[None]]


@dataclass
class Checkpointer:
    """Decides when each tenant's chain is due, signs its head with the audit key, stores and publishes it."""

    store: AuditStore
    signer: Signer
    publish: Publish
    every: int
    interval_s: float
    clock: Callable[[], float] = time.monotonic
    _heads: dict[str, int] = field(default_factory=dict)
    _checkpointed: dict[str, int] = field(default_factory=dict)
    _waiting_since: dict[str, float] = field(default_factory=dict)
    # Whether a stored checkpoint may still wait to be published (so idle ticks do not query for it).
    _maybe_unpublished: bool = True

    def load(self) -> None:
        """Read every chain head and last checkpoint (a restart picks up where the last run stopped)."""
        self._checkpointed = dict(self.store.checkpoints.latest())
        for tenant, (seq, _hash) in self.store.heads().items():
            self._checkpointed.setdefault(tenant, self.store.archives.anchor(tenant).seq)
            self.appended({tenant: seq})

    def appended(self, heads: Mapping[str, int]) -> None:
        """Note new chain heads; a tenant's wait for its checkpoint starts with its first unsigned record."""
        now = self.clock()
        for tenant, seq in heads.items():
            self._heads[tenant] = max(seq, self._heads.get(tenant, 0))
            if self._heads[tenant] > self._checkpointed.get(tenant, 0):
                self._waiting_since.setdefault(tenant, now)

    def due(self) -> list[str]:
        now = self.clock()
        return [tenant for tenant, head in self._heads.items()
                if checkpoint_due(head=head, checkpointed=self._checkpointed.get(tenant, 0),
                                  waiting_s=now - self._waiting_since.get(tenant, now), every=self.every,
                                  interval_s=self.interval_s)]

    async def tick(self) -> int:
        """Checkpoint every chain that is due, then publish what is not yet on the bus; returns how many made."""
        made = 0
        for tenant in self.due():
            try:
                made += await asyncio.to_thread(self._catch_up, tenant)
            except (StoreUnavailable, StoreRefused) as exc:
                log.warning("checkpoint of %s postponed: the store is unavailable (%s)", tenant, exc)
                break
            except ChainDamaged as exc:
                log.error("not checkpointing %s: %s; run `caduceus audit verify --tenant %s`", tenant, exc, tenant)
                self._give_up_until_appended(tenant)
            except Exception:  # one chain the checkpointer cannot handle must not stop the trail of all others
                log.exception("checkpoint of %s failed; run `caduceus audit verify --tenant %s`", tenant, tenant)
                self._give_up_until_appended(tenant)
        await self._publish_pending()
        return made

    async def seal(self) -> int:
        """Sign every chain with unsigned records now, due or not, then publish (a graceful stop); how many made.

        Reads every head from the store first: on replicas, what the others appended is signed too."""
        try:
            await asyncio.to_thread(self.load)
        except (StoreUnavailable, StoreRefused) as exc:
            log.error("could not sign the chains' heads before stopping: the store is unavailable (%s)", exc)
            return 0
        made = 0
        for tenant in [tenant for tenant, head in self._heads.items() if head > self._checkpointed.get(tenant, 0)]:
            try:
                made += await asyncio.to_thread(self._catch_up, tenant)
            except (StoreUnavailable, StoreRefused) as exc:
                log.error("could not sign %s's head before stopping: the store is unavailable (%s)", tenant, exc)
                break
            except ChainDamaged as exc:
                log.error("not checkpointing %s: %s; run `caduceus audit verify --tenant %s`", tenant, exc, tenant)
            except Exception:
                log.exception("checkpoint of %s failed; run `caduceus audit verify --tenant %s`", tenant, tenant)
        await self._publish_pending()
        log.info("signed the head of every chain before stopping (%d checkpoint%s)", made, "" if made == 1 else "s")
        return made

    def _give_up_until_appended(self, tenant: str) -> None:
        self._waiting_since.pop(tenant, None)
        self._checkpointed[tenant] = self._heads[tenant]

    def _catch_up(self, tenant: str) -> int:
        """Sign everything unsigned, at most `every` records per checkpoint (a long unsigned tail, after an
        upgrade or an outage, becomes several checkpoints of bounded size)."""
        made = 0
        while self._checkpointed.get(tenant, 0) < self._heads[tenant]:
            made += self._make(tenant) is not None
        return made

    def _make(self, tenant: str) -> AuditCheckpointed | None:
        # Another replica may have signed past what this one knows: start after the last stored checkpoint.
        prev = max(self._checkpointed.get(tenant, 0), self.store.checkpoints.latest_of(tenant))
        if prev >= self._heads[tenant]:
            self._checkpointed[tenant] = prev
            self._waiting_since.pop(tenant, None)
            return None
        head = min(self._heads[tenant], prev + self.every)
        checkpoint = checkpoint_for(tenant, prev, self.store.hashes(tenant, prev, head), utcnow())
        event = AuditCheckpointed.of(SignedCheckpoint.issue(self.signer, checkpoint))
        stored = self.store.checkpoints.add(event)
        self._checkpointed[tenant] = checkpoint.seq
        self._waiting_since.pop(tenant, None)
        if self._heads[tenant] > checkpoint.seq:  # appended meanwhile: the wait for the next one starts now
            self._waiting_since[tenant] = self.clock()
        if stored:
            CHECKPOINTS.labels(tenant).inc()
            self._maybe_unpublished = True
            log.info("checkpoint of %s at record %d (%d records signed)", tenant, checkpoint.seq, checkpoint.seq - prev)
        return event if stored else None

    async def _publish_pending(self) -> None:
        if not self._maybe_unpublished:
            return
        try:
            pending = await asyncio.to_thread(self.store.checkpoints.unpublished)
        except (StoreUnavailable, StoreRefused):
            return
        for event in pending:
            try:
                await self.publish(event)
                await asyncio.to_thread(self.store.checkpoints.mark_published, event.event_id)
            except Exception as exc:  # the bus or the store: the checkpoint is kept and published next tick
                log.warning("checkpoint %s not published yet (%s); will retry", event.event_id, exc)
                return
        self._maybe_unpublished = False
