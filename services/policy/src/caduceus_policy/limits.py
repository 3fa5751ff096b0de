"""Sliding-window accounting for rate limits and budgets (pure; the counters live in JetStream KV).

A window is kept as amounts per slot, a slot being 1/60 of the window: the total counts the
slots of the last window, so the limit slides with at most one slot of granularity, and a
counter's size stays bounded however busy the scope is.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

SLOTS_PER_WINDOW = 60


@dataclass
class SlidingWindow:
    window_s: float
    slots: dict[int, float] = field(default_factory=dict)

    @property
    def slot_s(self) -> float:
        return self.window_s / SLOTS_PER_WINDOW

    def _slot(self, now: float) -> int:
        return math.floor(now / self.slot_s)

    def total(self, now: float) -> float:
        current = self._slot(now)
        return sum(amount for slot, amount in self.slots.items() if current - SLOTS_PER_WINDOW < slot <= current)

    def add(self, now: float, amount: float) -> SlidingWindow:
        current = self._slot(now)
        kept = {slot: value for slot, value in self.slots.items() if slot > current - SLOTS_PER_WINDOW}
        kept[current] = kept.get(current, 0.0) + amount
        return SlidingWindow(self.window_s, kept)

    def to_json(self) -> bytes:
        return json.dumps({"window_s": self.window_s, "slots": {str(k): v for k, v in self.slots.items()}}).encode()

    @classmethod
    def from_json(cls, data: bytes | None, window_s: float) -> SlidingWindow:
        """The stored window, or an empty one when there is none or it was kept for another window length."""
        if not data:
            return cls(window_s)
        try:
            raw = json.loads(data)
            if float(raw["window_s"]) != window_s:
                return cls(window_s)
            return cls(window_s, {int(k): float(v) for k, v in raw["slots"].items()})
        except (ValueError, KeyError, TypeError):
            return cls(window_s)


def counter_key(tenant: str, limit_id: str, scope: tuple[str, ...]) -> str:
    """A JetStream KV key for one limit's counter in one scope (ids and user names hashed: KV keys are plain)."""
    digest = hashlib.sha256("\0".join((limit_id, *scope)).encode()).hexdigest()[:40]
    return f"{tenant}.{digest}"
