"""The packs a policy replica decides with: the live one, and a candidate running in shadow.

A published pack replaces the live one only if it compiles; otherwise the replica keeps
the last good pack and says why (the message is logged and published as an error event).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from caduceus_policy.adapters.packs import LIVE, SHADOW, PublishedPack
from caduceus_policy.domain import PolicyEngine
from caduceus_policy.engine import engine_from_files
from caduceus_policy.pack.loader import PackError


@dataclass
class LivePacks:
    live: PolicyEngine
    shadow: PolicyEngine | None = None
    disagreements: int = 0
    rejected: dict[str, str] = field(default_factory=dict)

    def apply(self, key: str, pack: PublishedPack | None, problem: str | None = None) -> str | None:
        """Take a pack published under `key`; return why it was not taken (None when it was, or nothing changed)."""
        if key not in (LIVE, SHADOW):
            return None
        if pack is None and problem is None:
            if key == SHADOW:
                self.shadow = None
                return None
            return f"the live pack was removed from the bus; keeping {self.live.version}"
        current = self.live if key == LIVE else self.shadow
        if pack is not None and current is not None and _files(current) == dict(pack.files):
            return None
        if problem is None:
            try:
                engine = engine_from_files(pack.files, origin=f"published {key} pack {pack.version}")  # type: ignore
            except PackError as exc:
                problem = str(exc)
        if problem is not None:
            kept = f"keeping {self.live.version}" if key == LIVE else "shadow unchanged"
            reason = f"published {key} pack rejected ({kept}): {problem}"
            self.rejected[key] = reason
            return reason
        self.rejected.pop(key, None)
        if key == LIVE:
            self.live = engine
        else:
            self.shadow = engine
            self.disagreements = 0
        return None


def _files(engine: PolicyEngine) -> dict[str, str] | None:
    pack = getattr(engine, "pack", None)
    return dict(pack.files) if pack is not None else None
