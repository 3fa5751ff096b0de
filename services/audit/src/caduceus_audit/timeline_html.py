"""An incident timeline as one standalone HTML page: no scripts, no external assets, every recorded text
escaped (the trail holds whatever people and agents typed, including markup meant to run)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from html import escape

from caduceus_audit.domain.narrative import Actor, DecisionFacts
from caduceus_audit.domain.timeline import CallStory, Moment, Timeline

MAX_RESULT = 4000
VERDICT_CLASS = {"allow": "allow", "deny": "deny", "approve": "approve"}

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; color: #1d2433; }
h1 { font-size: 1.4rem; margin-bottom: .2rem; } .meta { color: #5b6478; margin-bottom: 1.5rem; }
ol { list-style: none; padding: 0; } li { border-left: 3px solid #c9d1e0; padding: .4rem 0 .6rem 1rem; margin: 0; }
li.warning { border-color: #d98b1f; } li.high { border-color: #c0392b; }
.when { color: #5b6478; font-family: ui-monospace, monospace; font-size: 12px; }
.who { font-weight: 600; } .kind { text-transform: uppercase; font-size: 11px; color: #5b6478; margin-left: .4rem; }
pre { background: #f4f6fa; padding: .5rem; white-space: pre-wrap; word-break: break-word; margin: .3rem 0; }
table { border-collapse: collapse; margin: .3rem 0; } td { padding: .1rem .6rem .1rem 0; vertical-align: top; }
.allow { color: #1e7b34; font-weight: 600; } .deny { color: #c0392b; font-weight: 600; }
.approve { color: #a0620c; font-weight: 600; }
"""


def render_html(timeline: Timeline, *, generated_at: datetime | None = None) -> str:
    """The whole page for a timeline."""
    generated = (generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S UTC")
    meta = (f"{timeline.records} records · tenant {_list(timeline.tenants)} · session {_list(timeline.sessions)} · "
            f"trace {_list(timeline.traces)} · generated {generated} by caduceus audit timeline")
    items = "\n".join(_moment(moment) for moment in timeline.moments)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
            f"<title>{escape(timeline.title)}</title><style>{STYLE}</style></head>\n<body>\n"
            f"<h1>{escape(timeline.title)}</h1>\n<div class=\"meta\">{escape(meta)}</div>\n<ol>\n{items}\n</ol>\n"
            f"</body></html>\n")


def _list(values: set[str]) -> str:
    return ", ".join(sorted(values)) or "-"


def _when(moment: datetime) -> str:
    return f'<span class="when">{escape(moment.strftime("%H:%M:%S.%f")[:-3])}</span>'


def _who(actor: Actor | None) -> str:
    if actor is None:
        return ""
    roles = f" ({', '.join(actor.roles)})" if actor.roles else ""
    return f'<span class="who">{escape(actor.user + roles)}</span> '


def _moment(moment: Moment) -> str:
    head = f"{_when(moment.at)} {_who(moment.who)}<span class=\"kind\">{escape(moment.kind)}</span>"
    if moment.call is not None:
        body = _call(moment.call)
    elif moment.text:
        body = f"<pre>{escape(moment.text)}</pre>"
    else:
        body = f"<div>{escape(moment.summary)}</div>"
    records = ", ".join(str(seq) for seq in moment.seqs)
    return (f'<li class="{escape(moment.severity)}" title="records {escape(records)} of {escape(moment.tenant)}">'
            f"{head}{body}</li>")


def _decision(at: datetime, decision: DecisionFacts) -> str:
    rules = f" · rules {', '.join(decision.policy_ids)}" if decision.policy_ids else ""
    pack = f" · pack {decision.pack_version}" if decision.pack_version else ""
    group = f" · approvers {decision.approver_group}" if decision.approver_group else ""
    css = VERDICT_CLASS.get(decision.verdict, "")
    return (f"<tr><td>{_when(at)}</td><td class=\"{css}\">{escape(decision.verdict)}</td>"
            f"<td>by {escape(decision.decided_by)}: {escape(decision.reason)}{escape(rules + pack + group)}</td></tr>")


def _call(story: CallStory) -> str:
    facts = [("tool", story.facts.tool), ("call", story.call_id), ("workspace", story.workspace or "-"),
             ("digest", story.facts.digest or "-")]
    rows = "".join(f"<tr><td>{escape(name)}</td><td>{escape(value)}</td></tr>" for name, value in facts)
    args = json.dumps(story.facts.args, ensure_ascii=False, indent=2, sort_keys=True)
    decisions = "".join(_decision(at, decision) for at, decision in story.decisions) or \
        "<tr><td colspan=\"3\">no decision recorded</td></tr>"
    outcome = "<div>not completed</div>"
    if story.status is not None and story.completed_at is not None:
        result = story.result if len(story.result) <= MAX_RESULT else story.result[:MAX_RESULT] + "\n[…]"
        outcome = (f"<div>{_when(story.completed_at)} result <b>{escape(story.status)}</b>"
                   f"{': ' + escape(story.reason) if story.reason else ''}</div>"
                   + (f"<pre>{escape(result)}</pre>" if result else ""))
    dispatched = f"<div>{_when(story.dispatched_at)} dispatched to the executor</div>" if story.dispatched_at else ""
    return (f"<div>asked for <b>{escape(story.facts.tool)}</b></div><table>{rows}</table><pre>{escape(args)}</pre>"
            f"<table>{decisions}</table>{dispatched}{outcome}")
