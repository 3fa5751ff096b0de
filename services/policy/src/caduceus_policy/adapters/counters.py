"""Rate-limit and budget counters in JetStream KV, shared by every policy replica.

Each counter is one key holding a sliding window; a charge is a compare-and-set on the
key's revision, retried when another replica charged first, so replicas never lose or
double an increment and all of them see the same totals.

A replica remembers each counter as it last read or wrote it, and charges that revision
directly: the compare-and-set succeeds only when nobody changed the counter since, so the
total it checked is the shared total, and otherwise the replica reads the counter and tries
again. A charge that the remembered counter would refuse is refused only after reading it.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from caduceus_bus import create_key, open_bucket
from caduceus_policy.limits import SlidingWindow, counter_key
from caduceus_policy.pack.model import Limit

log = logging.getLogger(__name__)
BUCKET = "caduceus_policy_limits"
CAS_ATTEMPTS = 50
MAX_REMEMBERED_COUNTERS = 10_000
MAX_WINDOW_S = 31 * 86400


class LimitExceeded(Exception):
    def __init__(self, limit: Limit, total: float) -> None:
        super().__init__(f"{limit.id}: {total:g} of {limit.describe()} used")
        self.limit = limit
        self.total = total


class SharedCounters:
    """Sliding-window counters in one KV bucket."""

    def __init__(self, kv: KeyValue, clock: Callable[[], float] = time.time,
                 max_remembered: int = MAX_REMEMBERED_COUNTERS) -> None:
        self.kv = kv
        self.clock = clock
        self.max_remembered = max_remembered
        # key -> the counter and its revision as this replica last read or wrote it
        self._known: OrderedDict[str, tuple[SlidingWindow, int]] = OrderedDict()

    @classmethod
    async def open(cls, js: JetStreamContext, bucket: str = BUCKET, *, replicas: int = 1) -> SharedCounters:
        return cls(await open_bucket(js, bucket, max_age_s=MAX_WINDOW_S, replicas=replicas))

    async def _read(self, key: str, window_s: float) -> tuple[SlidingWindow, int]:
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return SlidingWindow(window_s), 0
        return SlidingWindow.from_json(entry.value, window_s), entry.revision or 0

    async def total(self, key: str, window_s: float) -> float:
        window, _ = await self._read(key, window_s)
        return window.total(self.clock())

    async def add(self, key: str, window_s: float, amount: float, maximum: float | None = None) -> float:
        """Add `amount`; with `maximum`, refuse (LimitExceeded's total, via ValueError) when it would pass it.

        Returns the new total. Retries when another replica updated the counter in between.
        """
        known = self._known.pop(key, None)
        for _ in range(CAS_ATTEMPTS):
            fresh = known is None or known[0].window_s != window_s
            window, revision = await self._read(key, window_s) if fresh else known  # type: ignore[misc]
            known = None
            now = self.clock()
            total = window.total(now)
            if maximum is not None and total + amount > maximum:
                if not fresh:
                    continue  # refuse on the shared counter, not on memory of it
                self._remember(key, window, revision)
                raise _Full(total)
            updated = window.add(now, amount)
            try:
                if revision:
                    revision = await self.kv.update(key, updated.to_json(), last=revision)
                else:
                    revision = await create_key(self.kv, key, updated.to_json())
            except KeyWrongLastSequenceError:
                continue  # another replica charged first: read the counter again
            self._remember(key, updated, revision)
            return total + amount
        raise RuntimeError(f"counter {key} kept changing under {CAS_ATTEMPTS} attempts")

    def _remember(self, key: str, window: SlidingWindow, revision: int) -> None:
        self._known[key] = (window, revision)
        while len(self._known) > self.max_remembered:
            self._known.popitem(last=False)

    async def enforce(self, limits: Iterable[Limit], *, tenant: str, user: str, tool: str, workspace: str) -> None:
        """Check budgets, then charge one call to each call limit; raise LimitExceeded on the first one full."""
        keyed = [(limit, counter_key(tenant, limit.id, limit.scope(tenant=tenant, user=user, tool=tool,
                                                                     workspace=workspace))) for limit in limits]
        for limit, key in keyed:
            if limit.kind != "calls":
                total = await self.total(key, limit.window_s)
                if total >= limit.maximum:
                    raise LimitExceeded(limit, total)
        for limit, key in keyed:
            if limit.kind == "calls":
                try:
                    await self.add(key, limit.window_s, 1.0, limit.maximum)
                except _Full as full:
                    raise LimitExceeded(limit, full.total) from None

    async def record_usage(self, limits: Iterable[Limit], *, tenant: str, user: str, workspace: str, tokens: int,
                           cost_usd: float) -> None:
        """Count one model call's tokens and cost against every budget of the tenant it falls under."""
        for limit in limits:
            amount = {"tokens": float(tokens), "cost_usd": cost_usd}.get(limit.kind, 0.0)
            if amount <= 0:
                continue
            key = counter_key(tenant, limit.id, limit.scope(tenant=tenant, user=user, tool="", workspace=workspace))
            await self.add(key, limit.window_s, amount)


class _Full(Exception):
    def __init__(self, total: float) -> None:
        self.total = total
