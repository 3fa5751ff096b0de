"""Model usage people can read: tokens, cost, calls and refusals from the audit trail, grouped as asked (pure reads).

Counted from what the inference gateway and policy recorded: `model.usage` (the upstream's real token counts,
one per answered call) and `model.decided` with verdict deny (a refusal, attributed to the person of its
`model.requested`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from caduceus_audit.adapters.store import AuditStore, RecordFilter

DIMENSIONS = ("tenant", "person", "workspace", "model", "day")
KINDS = ("model.requested", "model.decided", "model.usage")


@dataclass
class UsageRow:
    """One group's totals."""

    key: dict[str, str]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0
    refusals: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        return {**self.key, "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "tokens": self.tokens, "cost_usd": round(self.cost_usd, 6), "calls": self.calls,
                "refusals": self.refusals}


@dataclass
class UsageReport:
    by: tuple[str, ...]
    rows: list[UsageRow] = field(default_factory=list)


def usage_report(store: AuditStore, *, by: tuple[str, ...] = ("tenant",), tenant: str | None = None,
                 since: datetime | None = None) -> UsageReport:
    """Totals per group of `by` (any of DIMENSIONS), oldest day first, then by key."""
    unknown = [d for d in by if d not in DIMENSIONS]
    if unknown or not by:
        raise ValueError(f"cannot group by {', '.join(unknown) or 'nothing'}: use any of {', '.join(DIMENSIONS)}")
    requested: dict[tuple[str, str], dict[str, str]] = {}
    groups: dict[tuple[str, ...], UsageRow] = {}

    def row(values: dict[str, str]) -> UsageRow:
        key = {dimension: values.get(dimension, "") for dimension in by}
        group = tuple(key.values())
        if group not in groups:
            groups[group] = UsageRow(key)
        return groups[group]

    for record in store.stream(RecordFilter(tenant=tenant, since=since, kinds=KINDS)):
        try:
            body = json.loads(record.body)
        except (TypeError, ValueError):
            continue
        day = record.occurred_at.date().isoformat()
        if record.kind == "model.requested":
            grant = (body.get("grant") or {}).get("grant") or {}
            requested[(record.tenant, str(body.get("call_id")))] = {
                "tenant": record.tenant, "person": str(grant.get("user", "?")),
                "workspace": str(body.get("workspace", "")), "model": str(body.get("model") or "")}
        elif record.kind == "model.decided":
            decision = ((body.get("decision") or {}).get("decision")) or {}
            if decision.get("verdict") == "deny":
                asked = requested.get((record.tenant, str(body.get("call_id"))), {
                    "tenant": record.tenant, "person": "?", "workspace": str(body.get("workspace", "")), "model": ""})
                row({**asked, "day": day}).refusals += 1
        else:
            group = row({"tenant": record.tenant, "person": str(body.get("user", "?")),
                         "workspace": str(body.get("workspace", "")), "model": str(body.get("model") or ""),
                         "day": day})
            group.prompt_tokens += int(body.get("prompt_tokens") or 0)
            group.completion_tokens += int(body.get("completion_tokens") or 0)
            group.cost_usd += float(body.get("cost_usd") or 0.0)
            group.calls += 1
    ordered = sorted(groups.values(), key=lambda r: tuple(r.key.values()))
    return UsageReport(by, ordered)
