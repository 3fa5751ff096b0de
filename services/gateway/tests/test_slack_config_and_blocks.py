"""slack.yaml is checked as a whole with line numbers and holds no secrets; approval messages show the exact
call, redacted and escaped, with buttons only while it waits."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caduceus_contracts import ApprovalView, ApprovalVote, call_digest
from caduceus_gateway.slack import SlackConfigError, load_slack_config, parse_slack_config
from caduceus_gateway.slack.blocks import APPROVE_ACTION, approval_blocks, parse_button_value

ENV = {"BOT": "xoxb-1", "SECRET": "s3cret", "KEY": "cad_sa_x"}
GOOD = """\
workspaces:
  T0ACME:
    tenant: acme
    bot_token: env:BOT
    signing_secret: env:SECRET
    service_account_key: file:keys/acme.key
    approvals_channel: C0APPROVALS
    link_by_email: true
"""


def test_a_good_file_maps_each_workspace_to_its_tenant_with_its_secrets_read(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "acme.key").write_text("cad_sa_from_file\n")
    (tmp_path / "slack.yaml").write_text(GOOD)
    config = load_slack_config(tmp_path / "slack.yaml", ENV)
    acme = config.for_team("T0ACME")
    assert (acme.tenant, acme.mode, acme.bot_token, acme.service_account_key, acme.approvals_channel) == (
        "acme", "http", "xoxb-1", "cad_sa_from_file", "C0APPROVALS")
    assert acme.link_by_email and config.for_team("T0OTHER") is None
    assert "s3cret" not in repr(acme) and "xoxb" not in repr(acme)


def test_every_problem_is_reported_at_once_with_its_line(tmp_path: Path) -> None:
    broken = """\
workspaces:
  T0ACME:
    tenant: Not A Tenant
    bot_token: xoxb-pasted-in-the-file
    signing_secret: env:MISSING
    service_account_key: env:KEY
    colour: blue
  nonsense:
    tenant: acme
    mode: socket
    bot_token: env:BOT
    signing_secret: env:SECRET
    service_account_key: env:KEY
"""
    with pytest.raises(SlackConfigError) as refused:
        parse_slack_config(broken, "slack.yaml", tmp_path, ENV)
    text = str(refused.value)
    assert "slack.yaml has 6 problem(s)" in text
    assert "line 3: workspace T0ACME: `tenant` has an invalid value 'Not A Tenant'" in text
    assert "line 4: workspace T0ACME: `bot_token` must be a secret reference, env:NAME or file:PATH" in text
    assert "xoxb-pasted-in-the-file" not in text  # a secret pasted by mistake is not echoed back
    assert "line 5: workspace T0ACME: `signing_secret`: the environment variable MISSING is not set" in text
    assert "line 7: workspace T0ACME: unknown field 'colour'" in text
    assert "line 8: 'nonsense' is not a Slack team id" in text
    assert "line 8: workspace nonsense: `app_token` is missing" in text  # Socket Mode needs the app-level token


def test_a_missing_or_shapeless_file_says_what_to_write(tmp_path: Path) -> None:
    with pytest.raises(SlackConfigError, match="(?s)cannot read .*slack.yaml.*workspaces:"):
        load_slack_config(tmp_path / "slack.yaml", ENV)
    with pytest.raises(SlackConfigError, match="needs a `workspaces:` mapping"):
        parse_slack_config("teams: {}\n", "slack.yaml", tmp_path, ENV)
    with pytest.raises(SlackConfigError, match="not valid YAML at line 3"):
        parse_slack_config("workspaces:\n  T0: [\n", "slack.yaml", tmp_path, ENV)


NOW = datetime(2026, 12, 5, 3, 0, tzinfo=UTC)


def view(args: dict, **changes) -> ApprovalView:
    digest = call_digest(tenant="acme", workspace="default", session="s1", tool="terminal", args=args)
    fields = dict(workflow_id="approval-acme-c1", tenant="acme", call_id="c1", workspace="default", session_id="s1",
                  tool="terminal", args=args, digest=digest,
                  requester="alice", reason="deletes need an admin", approvers=("carol",), quorum=1, opened_at=NOW,
                  expires_at=NOW + timedelta(minutes=15))
    return ApprovalView(**{**fields, **changes})


def test_a_waiting_call_has_buttons_naming_that_exact_call_and_a_decided_one_has_none() -> None:
    waiting = approval_blocks(view({"command": "rm -rf build"}))
    buttons = next(b for b in waiting if b["type"] == "actions")["elements"]
    assert buttons[0]["action_id"] == APPROVE_ACTION
    assert parse_button_value(buttons[0]["value"]) == ("c1", view({"command": "rm -rf build"}).digest)
    decided = approval_blocks(view({"command": "rm -rf build"}, status="approved",
                                   votes=(ApprovalVote(approver="carol", answer="approve", at=NOW),)))
    assert not any(b["type"] == "actions" for b in decided)
    assert "Approved by carol (approve)" in json.dumps(decided)
    expired = approval_blocks(view({"command": "rm -rf build"}, status="expired", resolution="nobody answered"))
    assert "Expired: nobody answered" in json.dumps(expired) and not any(b["type"] == "actions" for b in expired)


def test_secrets_in_the_arguments_are_redacted_before_slack_sees_them() -> None:
    shown = json.dumps(approval_blocks(view({"command": "curl -H 'Authorization: Bearer ghp_"
                                                        "0123456789abcdefghijklmnopqrstuvwxyzAB' x"})))
    assert "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB" not in shown


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("<>&@!|`*_~ abc\n"), max_size=60))
def test_hostile_arguments_cannot_ping_link_or_break_out_of_the_code_block(text: str) -> None:
    blocks = approval_blocks(view({"command": text}, reason=text, requester=f"alice{text}"[:200]))
    for block in blocks:
        for part in [block.get("text", {})] + block.get("elements", []):
            mrkdwn = part.get("text") if isinstance(part.get("text"), str) else None
            if part.get("type") == "mrkdwn" and mrkdwn is not None:
                assert "<" not in mrkdwn and ">" not in mrkdwn  # no <!channel>, <@U…> or <http://…|link>
    code = next(b for b in blocks if b["type"] == "section" and b["text"]["text"].startswith("```"))["text"]["text"]
    assert code.count("```") == 2
