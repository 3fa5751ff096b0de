"""Model usage for a tenant admin's page: asked of the audit service over the bus, laid out by day.

The numbers are audit's: it owns the trail and counts usage from it exactly as `caduceus usage` does
(`caduceus_audit.usage`). The approval service never opens the audit store: it asks
`caduceus.audit.usage.<tenant>` for the signed-in admin's own tenant, and a question that goes unanswered is
shown as unavailable, never as zero.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from caduceus_contracts import UsageAnswer, UsageDimension, UsageQuery, UsageTotals, subjects

CHART_DAYS = 30
DIMENSIONS: tuple[UsageDimension, ...] = ("tenant", "person", "workspace", "model", "day")

Request = Callable[[str, bytes, float], Awaitable[bytes]]


class UsageUnavailable(Exception):
    """Audit did not answer, or answered with a problem instead of numbers."""


@dataclass(frozen=True)
class UsageWindow:
    """The last `days` calendar days (UTC), today included: what the page's tables and chart cover."""

    first: date
    days: int = CHART_DAYS

    @classmethod
    def ending(cls, now: datetime, days: int = CHART_DAYS) -> UsageWindow:
        return cls(now.astimezone(UTC).date() - timedelta(days=days - 1), days)

    @property
    def since(self) -> datetime:
        return datetime.combine(self.first, time(0), UTC)

    @property
    def dates(self) -> list[date]:
        return [self.first + timedelta(days=n) for n in range(self.days)]


@dataclass(frozen=True)
class DayUsage:
    day: date
    tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0
    refusals: int = 0


def by_day(rows: tuple[UsageTotals, ...], window: UsageWindow) -> list[DayUsage]:
    """One entry per day of the window (zero where nothing was recorded), from rows grouped by day."""
    found = {row.key.get("day", ""): row for row in rows}
    series = []
    for day in window.dates:
        row = found.get(day.isoformat())
        series.append(DayUsage(day) if row is None else
                      DayUsage(day, row.tokens, row.cost_usd, row.calls, row.refusals))
    return series


def totals(rows: tuple[UsageTotals, ...]) -> UsageTotals:
    """The sum of every row: the tenant's whole window."""
    return UsageTotals(prompt_tokens=sum(r.prompt_tokens for r in rows),
                       completion_tokens=sum(r.completion_tokens for r in rows), tokens=sum(r.tokens for r in rows),
                       cost_usd=round(sum(r.cost_usd for r in rows), 6), calls=sum(r.calls for r in rows),
                       refusals=sum(r.refusals for r in rows))


class AuditUsage:
    """Asks audit for one tenant's usage over the bus (request/reply, bounded by `timeout_s`)."""

    def __init__(self, request: Request, timeout_s: float) -> None:
        self._request = request
        self.timeout_s = timeout_s

    async def report(self, tenant: str, by: tuple[UsageDimension, ...], since: datetime,
                     *, days: bool = False) -> UsageAnswer:
        """The tenant's rows grouped by `by` since `since` (and its days, when asked); UsageUnavailable when audit
        does not answer."""
        query = UsageQuery(tenant=tenant, by=by, since=since, days=days)
        try:
            data = await self._request(subjects.audit_usage(tenant), query.model_dump_json().encode(), self.timeout_s)
        except Exception as exc:  # no responders, a timeout, a closed connection: all mean no numbers
            raise UsageUnavailable(f"the audit service did not answer ({type(exc).__name__ or 'timeout'})") from None
        try:
            answer = UsageAnswer.model_validate(json.loads(data))
        except ValueError:
            raise UsageUnavailable("the audit service's answer could not be read") from None
        if answer.problem:
            raise UsageUnavailable(answer.problem)
        return answer
