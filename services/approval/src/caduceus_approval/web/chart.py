"""The usage chart as server-rendered SVG: no script, no outside asset, so it draws under the page's CSP
(`script-src 'none'`) and in a browser with JavaScript off. Every text in it is escaped."""

from __future__ import annotations

from markupsafe import Markup, escape

from caduceus_approval.usage import DayUsage

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 8, 16, 30


def _nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten at or above `value` (at least 1): a readable axis top."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def usage_chart(series: list[DayUsage]) -> Markup:
    """Tokens per day as bars, refusals as red marks above them, one column per day of `series`."""
    top = _nice_ceiling(max((day.tokens for day in series), default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    column = plot_w / max(len(series), 1)
    bar_w = max(column * 0.7, 1.0)
    total_tokens = sum(day.tokens for day in series)
    total_refusals = sum(day.refusals for day in series)
    label = (f"Tokens per day for the last {len(series)} days: {total_tokens} tokens, {total_refusals} refusals"
             if series else "No days to show")
    parts = [
        f'<svg class="usage-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label="{escape(label)}">',
        f"<title>{escape(label)}</title>",
        f'<line class="axis" x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" '
        'stroke="#8c959f"/>',
    ]
    for value in (0, top // 2, top):
        y = TOP + plot_h - plot_h * value / top
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#eaeef2"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="13" fill="#5b6571">'
                     f"{escape(f'{value:,}')}</text>")
    for n, day in enumerate(series):
        x = LEFT + n * column + (column - bar_w) / 2
        height = plot_h * day.tokens / top
        tip = (f"{day.day.isoformat()}: {day.tokens} tokens, {day.calls} calls, ${day.cost_usd:.4f}, "
               f"{day.refusals} refusals")
        parts.append(f'<rect class="bar" data-day="{day.day.isoformat()}" data-tokens="{day.tokens}" '
                     f'data-refusals="{day.refusals}" x="{x:.1f}" y="{TOP + plot_h - height:.1f}" '
                     f'width="{bar_w:.1f}" height="{height:.1f}" fill="#0b5cad"><title>{escape(tip)}</title></rect>')
        if day.refusals:
            parts.append(f'<circle class="refusal" cx="{x + bar_w / 2:.1f}" cy="{TOP + plot_h - height - 6:.1f}" '
                         f'r="4" fill="#b42318"><title>{escape(tip)}</title></circle>')
        if (len(series) - 1 - n) % 7 == 0:  # today, and every week back from it
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{HEIGHT - 10}" text-anchor="middle" font-size="13" '
                         f'fill="#5b6571">{escape(day.day.strftime("%m-%d"))}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
