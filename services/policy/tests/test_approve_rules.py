"""`effect: approve` rules in policy packs: who must agree, on which terms, and how they rank against deny and allow."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from caduceus_policy.engine import engine_from_files, load_engine
from caduceus_policy.facts import request_facts
from caduceus_policy.pack import PackError

ROOT = PurePosixPath("/srv/workspaces/acme/default")
DEFAULT_PACK = Path(__file__).resolve().parents[3] / "libs/embedded/src/caduceus_embedded/defaults/policy.yaml"
PACK = {"policy.yaml": """
version: "approve.1"
tenants:
  acme:
    rules:
      - id: never-touch-secrets
        effect: deny
        tools: [terminal]
        when: {touches_secret_file: true}
      - id: deletes-need-two-admins
        effect: approve
        roles: [member]
        tools: [terminal]
        when: {destructive: true}
        reason: deletes need two admins
        approvers: admin
        quorum: 2
        timeout: 10m
        escalate_to: [owner]
        escalate_after: 5m
        remind_every: 2m
      - id: members-use-the-terminal
        effect: allow
        roles: [member, admin]
        tools: [terminal]
"""}


def decide(roles: tuple[str, ...], command: str, files: dict[str, str] = PACK):
    return engine_from_files(files).decide(request_facts("acme", roles, "terminal", {"command": command}, ROOT,
                                                         user="alice"))


def test_approve_wins_over_allow_and_carries_its_terms_and_risky_facts() -> None:
    verdict = decide(("member",), "ls && rm -rf build")
    assert verdict.verdict == "approve" and "deletes need two admins" in verdict.reason
    assert verdict.policy_ids[0] == "deletes-need-two-admins"
    terms = verdict.approval
    assert (terms.approvers, terms.quorum, terms.timeout_s) == ("admin", 2, 600)
    assert (terms.escalate_to, terms.escalate_after_s, terms.remind_every_s, terms.self_approval) == (
        ("owner",), 300, 120, False)
    assert [name for name, _ in verdict.risky] == ["destructive"]
    assert "rm -rf build" in dict(verdict.risky)["destructive"]


def test_deny_wins_over_approve_and_roles_the_rule_does_not_name_are_allowed() -> None:
    assert decide(("member",), "rm -f ~/.ssh/id_rsa").verdict == "deny"
    assert decide(("admin",), "rm -rf build").verdict == "allow"
    assert decide(("member",), "echo rm").verdict == "allow"


def test_the_shipped_pack_asks_an_admin_before_a_member_deletes() -> None:
    verdict = load_engine(DEFAULT_PACK).decide(request_facts(
        "acme", ("member",), "terminal", {"command": "rm -rf build && echo build directory removed"}, ROOT, user="alice"))
    # `admin` is a role of the tenant, so the approval service can find the people who may answer.
    assert verdict.verdict == "approve" and verdict.approval.approvers == "admin"


@pytest.mark.parametrize(("terms", "problem"), [
    ("escalate_to: [owner]", "give `escalate_to` and `escalate_after` together"),
    ("escalate_after: 5m", "give `escalate_to` and `escalate_after` together"),
    ("escalate_to: [owner], escalate_after: later", "`escalate_after` is a duration"),
    ("remind_every: 0", "`remind_every` is a duration"),
    ("self_approval: sometimes", "`self_approval` is true or false"),
])
def test_approval_terms_are_checked_on_load(terms: str, problem: str) -> None:
    files = {"policy.yaml": 'version: "v"\ntenants:\n  acme:\n    rules:\n'
                            f"      - {{id: r, effect: approve, tools: [t], approvers: admin, {terms}}}\n"}
    with pytest.raises(PackError, match="rule 'r'") as caught:
        engine_from_files(files)
    assert problem in str(caught.value)


def test_a_tenants_approvals_section_refuses_a_misspelled_key() -> None:
    files = {"policy.yaml": 'version: "v"\ntenants:\n  acme:\n    approvals: {approvers: admin, quorom: 2}\n'
                            "    rules:\n      - {id: r, effect: approve, tools: [t]}\n"}
    with pytest.raises(PackError, match="unknown key `quorom`"):
        engine_from_files(files)


def test_self_approval_holds_only_when_every_approving_rule_allows_it() -> None:
    files = {"policy.yaml": 'version: "v"\ntenants:\n  acme:\n    rules:\n'
                            "      - {id: a, effect: approve, tools: [terminal], approvers: admin, self_approval: true}\n"
                            "      - {id: b, effect: approve, tools: [terminal], approvers: admin,"
                            " when: {destructive: true}}\n"
                            "      - {id: ok, effect: allow, tools: [terminal]}\n"}
    assert decide(("member",), "ls", files).approval.self_approval is True
    assert decide(("member",), "rm -rf build", files).approval.self_approval is False
