"""The usage page's layout, without any server: the 30-day window, days without calls, totals, and the SVG chart."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

from hypothesis import given
from hypothesis import strategies as st

from caduceus_approval.usage import DayUsage, UsageWindow, by_day, totals
from caduceus_approval.web.chart import usage_chart
from caduceus_contracts import UsageTotals


def test_the_window_is_the_last_30_calendar_days_today_included_across_a_month_end() -> None:
    window = UsageWindow.ending(datetime(2026, 3, 2, 23, 59, tzinfo=UTC))
    assert window.dates[0] == date(2026, 2, 1) and window.dates[-1] == date(2026, 3, 2) and len(window.dates) == 30
    assert window.since == datetime(2026, 2, 1, tzinfo=UTC)


def test_days_without_calls_are_zero_and_totals_add_every_row() -> None:
    window = UsageWindow.ending(datetime(2026, 12, 5, 8, tzinfo=UTC))
    rows = (UsageTotals(key={"day": "2026-12-05"}, tokens=60, prompt_tokens=50, completion_tokens=10, calls=1,
                        cost_usd=0.005),
            UsageTotals(key={"day": "2026-12-01"}, tokens=120, prompt_tokens=100, completion_tokens=20, calls=1,
                        cost_usd=0.01, refusals=2))
    series = by_day(rows, window)
    assert len(series) == 30 and series[-1] == DayUsage(date(2026, 12, 5), 60, 0.005, 1, 0)
    assert series[-5].refusals == 2 and sum(d.tokens for d in series) == 180
    total = totals(rows)
    assert (total.tokens, total.calls, total.refusals, total.cost_usd) == (180, 2, 2, 0.015)


def bars(svg: str) -> list[tuple[str, int, float]]:
    return [(day, int(tokens), float(height)) for day, tokens, height in re.findall(
        r'data-day="([0-9-]+)" data-tokens="(\d+)" data-refusals="\d+" x="[0-9.]+" y="[0-9.]+" width="[0-9.]+" '
        r'height="([0-9.]+)"', svg)]


def test_the_chart_draws_one_bar_a_day_in_proportion_and_marks_refusals() -> None:
    days = [DayUsage(date(2026, 12, n), tokens=t, refusals=r) for n, t, r in ((3, 0, 0), (4, 50, 1), (5, 100, 0))]
    svg = str(usage_chart(days))
    drawn = bars(svg)
    assert [d for d, _, _ in drawn] == ["2026-12-03", "2026-12-04", "2026-12-05"]
    assert drawn[0][2] == 0 and drawn[2][2] == 2 * drawn[1][2] > 0
    assert svg.count('class="refusal"') == 1 and "<script" not in svg and 'role="img"' in svg


def test_an_empty_month_is_a_flat_chart_not_an_error() -> None:
    window = UsageWindow.ending(datetime(2026, 12, 5, tzinfo=UTC))
    svg = str(usage_chart(by_day((), window)))
    assert len(bars(svg)) == 30 and all(height == 0 for _, _, height in bars(svg))


@given(st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=40))
def test_every_bar_fits_inside_the_chart_whatever_the_numbers(tokens: list[int]) -> None:
    days = [DayUsage(date(2026, 1, 1), tokens=t) for t in tokens]
    drawn = bars(str(usage_chart(days)))
    assert len(drawn) == len(tokens)
    assert all(0 <= height <= 220 for _, _, height in drawn)
    tallest = max(tokens)
    if tallest:
        assert max(h for _, t, h in drawn if t == tallest) >= max(h for _, _, h in drawn)
