"""The result a governed call hands back to Hermes, as the JSON string Hermes expects from a tool."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class CallOutcome:
    status: str  # ok | error | denied | refused
    result: str = ""
    reason: str = ""

    @property
    def ran(self) -> bool:
        return self.status in ("ok", "error")

    def for_model(self, tool: str) -> str:
        """What the model sees: the tool's own output, or a clear refusal it can explain to the user."""
        if self.ran:
            return self.result
        return json.dumps(
            {"error": f"Caduceus {self.status} this {tool} call: {self.reason}", "status": self.status},
            ensure_ascii=False,
        )


def denied(reason: str) -> CallOutcome:
    return CallOutcome(status="denied", reason=reason)
