"""`effect: approve` rules: who must agree, and how they rank against deny and allow."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from caduceus_contracts import ApprovalTerms
from caduceus_policy.domain import evaluate
from caduceus_policy.rulefile import RuleFileError, load_rule_file, parse_rules

ROOT = PurePosixPath("/srv/workspaces/acme/default")
DEFAULT_FILE = Path(__file__).resolve().parents[3] / "libs/embedded/src/caduceus_embedded/defaults/policy.yaml"
RULES = parse_rules("""
version: "approve.1"
tenants:
  acme:
    rules:
      - id: never-wipe-root
        effect: deny
        tools: [terminal]
        roles: [member]
        when: {destructive_command: true, path_outside_workspace: true}
      - id: deletes-need-two-admins
        effect: approve
        roles: [member]
        tools: [terminal]
        when: {destructive_command: true}
        reason: deletes need two admins
        approval: {groups: [admin], quorum: 2, timeout_s: 600, escalate_to: [owner], escalate_after_s: 300}
      - id: members-use-the-terminal
        effect: allow
        roles: [member, admin]
        tools: [terminal]
""")


def test_approve_wins_over_allow_and_carries_its_terms_and_risky_facts() -> None:
    verdict = evaluate(RULES, "acme", ("member",), "terminal", {"command": "ls && rm -rf build"}, ROOT)
    assert (verdict.verdict, verdict.reason, verdict.policy_ids) == ("approve", "deletes need two admins",
                                                                     ("deletes-need-two-admins",))
    assert verdict.approval == ApprovalTerms(groups=("admin",), quorum=2, timeout_s=600, escalate_to=("owner",),
                                             escalate_after_s=300)
    assert [(f.name, f.value, f.argument) for f in verdict.facts] == [("destructive_command", True, "command")]


def test_roles_the_approve_rule_does_not_name_are_allowed() -> None:
    assert evaluate(RULES, "acme", ("admin",), "terminal", {"command": "rm -rf build"}, ROOT).verdict == "allow"
    assert evaluate(RULES, "acme", ("member",), "terminal", {"command": "echo rm"}, ROOT).verdict == "allow"


def test_the_shipped_policy_asks_an_admin_before_a_member_deletes() -> None:
    verdict = evaluate(load_rule_file(DEFAULT_FILE), "acme", ("member",), "terminal",
                       {"command": "rm -f build.log && echo build log removed"}, ROOT)
    assert verdict.verdict == "approve" and verdict.approval.groups == ("admin",)


@pytest.mark.parametrize(("approval", "problem"), [
    (None, "an approve rule needs `approval:`"),
    ("{quorum: 2}", "names nobody"),
    ("{groups: [admin], quorum: 0}", "`approval.quorum`"),
    ("{groups: [admin], approvers: [carol]}", "unknown key `approval.approvers`"),
])
def test_approval_terms_are_checked_on_load(approval: str | None, problem: str) -> None:
    extra = f", approval: {approval}" if approval else ""
    text = f'version: "v"\ntenants:\n  acme:\n    rules:\n      - {{id: r, effect: approve, tools: [t]{extra}}}\n'
    with pytest.raises(RuleFileError, match="rule 'r'") as caught:
        parse_rules(text, source="policy.yaml")
    assert problem in str(caught.value)


def test_only_approve_rules_take_approval_terms() -> None:
    text = 'version: "v"\ntenants:\n  acme:\n    rules:\n      - {id: r, effect: allow, tools: [t], approval: {users: [c]}}\n'
    with pytest.raises(RuleFileError, match="only `effect: approve` rules take `approval:`"):
        parse_rules(text)
