"""A conversation as a person reads it: what was said, and each tool call once, with its decisions and outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from caduceus_gateway.store import Entry


@dataclass
class ShownCall:
    call_id: str
    tool: str
    args: dict[str, Any] = field(default_factory=dict)
    decisions: list[tuple[str, str]] = field(default_factory=list)  # (verdict, reason)
    outcome: tuple[str, str] | None = None  # (status, result or reason)


@dataclass(frozen=True)
class ShownEntry:
    kind: str  # person, agent, call, notice, error
    text: str = ""
    status: str = ""
    call: ShownCall | None = None


def shown_entries(entries: list[Entry]) -> list[ShownEntry]:
    """Stored entries in order, a call's decisions and outcome folded into the call they belong to."""
    shown: list[ShownEntry] = []
    calls: dict[str, ShownCall] = {}
    for entry in entries:
        body = entry.body
        kind = entry.kind
        if kind == "call":
            call = calls.setdefault(body.get("call_id", ""), ShownCall(body.get("call_id", ""), body.get("tool", "")))
            call.args = body.get("args") or {}
            shown.append(ShownEntry("call", call=call))
        elif kind in ("decision", "outcome"):
            call = calls.get(body.get("call_id", ""))
            if call is None:
                continue
            if kind == "decision":
                call.decisions.append((body.get("status", ""), body.get("text", "")))
            else:
                call.outcome = (body.get("status", ""), body.get("text", ""))
        elif kind == "reply":
            shown.append(ShownEntry("agent", text=body.get("text", ""), status=body.get("status", "ok")))
        else:
            shown.append(ShownEntry(kind, text=body.get("text", ""), status=body.get("status", "")))
    return shown
