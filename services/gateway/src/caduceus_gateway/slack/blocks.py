"""Block Kit for approvals: what an approver sees in Slack, and the buttons that answer. Pure functions.

Arguments are redacted before they are shown, and every text from the call is escaped for Slack's mrkdwn
(`&`, `<`, `>`), so a hostile argument cannot ping a channel or forge a link.
"""

from __future__ import annotations

import json

from caduceus_contracts import ApprovalView
from caduceus_redaction import redact_value

APPROVE_ACTION = "caduceus_approve"
DENY_ACTION = "caduceus_deny"
MAX_ARGS_CHARS = 2500


def escape(text: str) -> str:
    """Text as Slack shows it literally: no mentions, links or channel pings from the call's own words."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def button_value(view: ApprovalView) -> str:
    """What a button carries: the exact call and its digest, so a press answers that call and no other."""
    return json.dumps({"call_id": view.call_id, "digest": view.digest}, separators=(",", ":"))


def parse_button_value(value: str) -> tuple[str, str] | None:
    try:
        data = json.loads(value)
        return str(data["call_id"]), str(data["digest"])
    except (ValueError, KeyError, TypeError):
        return None


def _args_text(view: ApprovalView) -> str:
    text = json.dumps(redact_value(view.args), indent=2, ensure_ascii=False, default=str)
    if len(text) > MAX_ARGS_CHARS:
        text = text[:MAX_ARGS_CHARS] + "\n… (shortened; see the approvals page for all of it)"
    return text.replace("```", "'''")


def status_line(view: ApprovalView) -> str:
    votes = ", ".join(f"{escape(v.approver)} ({v.answer})" for v in view.votes)
    if view.status == "pending":
        expires = view.expires_at.strftime("%Y-%m-%d %H:%M UTC")
        counted = f"; answered so far: {votes}" if votes else ""
        return f":hourglass: Waiting for {escape(view.asked_of)} ({view.quorum} needed), expires {expires}{counted}"
    icon = {"approved": ":white_check_mark:", "denied": ":no_entry:", "expired": ":alarm_clock:"}.get(view.status, "")
    by = f" by {votes}" if votes else ""
    why = f": {escape(view.resolution)}" if view.resolution else ""
    return f"{icon} {view.status.capitalize()}{by}{why}"


def approval_text(view: ApprovalView) -> str:
    """The notification text (what a phone shows), without the blocks."""
    return (f"{view.requester} asks to run {view.tool} in {view.tenant}/{view.workspace}: "
            f"{view.status if view.status != 'pending' else 'approval needed'}")


def approval_blocks(view: ApprovalView) -> list[dict]:
    """The message for one approval: who asks, what exactly, why it needs approval, and its state or buttons."""
    blocks: list[dict] = [
        {"type": "header", "text": {"type": "plain_text", "text": "Approval needed"[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": (
            f"*{escape(view.requester)}* asks to run *{escape(view.tool)}* in "
            f"{escape(view.tenant)}/{escape(view.workspace)}\n*Why:* {escape(view.reason)}")}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"```{escape(_args_text(view))}```"}},
    ]
    if view.facts:
        facts = "\n".join(f"• {escape(f.name)}: `{escape(f.value)}`" for f in view.facts)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*Risky:*\n{facts}"}})
    blocks.append({"type": "context", "elements": [
        {"type": "mrkdwn", "text": f"{status_line(view)} · call `{escape(view.call_id)}`"}]})
    if view.status == "pending":
        value = button_value(view)
        blocks.append({"type": "actions", "block_id": f"approval-{view.call_id}"[:255], "elements": [
            {"type": "button", "action_id": APPROVE_ACTION, "style": "primary", "value": value,
             "text": {"type": "plain_text", "text": "Approve"}},
            {"type": "button", "action_id": DENY_ACTION, "style": "danger", "value": value,
             "text": {"type": "plain_text", "text": "Deny"}},
        ]})
    return blocks
