"""The rule engine: globbed tools, roles, facts, deny overrides allow, default deny."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from caduceus_policy.domain import RuleEngine, evaluate
from caduceus_policy.facts import request_facts
from caduceus_policy.rulefile import load_rule_file, parse_rules

ROOT = PurePosixPath("/srv/workspaces/acme/default")
DEFAULT_FILE = Path(__file__).resolve().parents[3] / "libs/embedded/src/caduceus_embedded/defaults/policy.yaml"

RULES = parse_rules(
    """
version: "test.1"
tenants:
  acme:
    rules:
      - id: writes-stay-in-workspace
        effect: deny
        tools: [write_file, patch]
        when: {path_outside_workspace: true}
        reason: writes must stay inside the workspace
      - id: no-browser-for-members
        effect: deny
        roles: [member]
        tools: ["browser_*"]
        reason: members do not browse
      - id: members-use-workspace-tools
        effect: allow
        roles: [member, admin]
        tools: [terminal, read_file, write_file, patch]
      - id: admins-use-mcp
        effect: allow
        roles: [admin]
        tools: ["mcp_*", "browser_*"]
      - id: anyone-todos
        effect: allow
        tools: [todo]
  globex:
    rules: []
""",
    source="test",
)


def test_a_member_may_run_terminal() -> None:
    verdict = evaluate(RULES, "acme", ["member"], "terminal", {"command": "ls"}, ROOT)
    assert verdict.verdict == "allow"
    assert verdict.policy_ids == ("members-use-workspace-tools",)


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/x", "sub/../../x", "../x"])
def test_deny_overrides_allow_for_a_write_outside_the_workspace(path: str) -> None:
    verdict = evaluate(RULES, "acme", ["member"], "write_file", {"path": path, "content": "x"}, ROOT)
    assert verdict.verdict == "deny"
    assert verdict.policy_ids == ("writes-stay-in-workspace",)
    assert verdict.reason == "writes must stay inside the workspace"


@pytest.mark.parametrize("path", ["./ok.txt", "sub/ok.txt", str(ROOT / "ok.txt")])
def test_a_write_inside_the_workspace_is_allowed(path: str) -> None:
    assert evaluate(RULES, "acme", ["member"], "write_file", {"path": path, "content": "x"}, ROOT).verdict == "allow"


def test_tool_globs_match_tool_families() -> None:
    assert evaluate(RULES, "acme", ["admin"], "mcp_github_create_issue", {}, ROOT).verdict == "allow"
    assert evaluate(RULES, "acme", ["member"], "mcp_github_create_issue", {}, ROOT).verdict == "deny"


def test_globs_do_not_match_more_than_they_say() -> None:
    # "mcp_*" must not allow a tool merely containing the prefix elsewhere.
    assert evaluate(RULES, "acme", ["admin"], "x_mcp_tool", {}, ROOT).verdict == "deny"


def test_a_deny_rule_scoped_to_a_role_does_not_touch_other_roles() -> None:
    member = evaluate(RULES, "acme", ["member"], "browser_navigate", {}, ROOT)
    admin = evaluate(RULES, "acme", ["admin"], "browser_navigate", {}, ROOT)
    assert (member.verdict, member.policy_ids, member.reason) == ("deny", ("no-browser-for-members",),
                                                                  "members do not browse")
    assert (admin.verdict, admin.policy_ids) == ("allow", ("admins-use-mcp",))


def test_a_person_with_both_roles_is_still_denied_by_a_deny_rule() -> None:
    assert evaluate(RULES, "acme", ["admin", "member"], "browser_navigate", {}, ROOT).verdict == "deny"


def test_a_rule_without_roles_applies_to_any_role_and_to_no_role() -> None:
    assert evaluate(RULES, "acme", ["auditor"], "todo", {}, ROOT).verdict == "allow"
    assert evaluate(RULES, "acme", [], "todo", {}, ROOT).verdict == "allow"


def test_nothing_matching_is_denied_with_the_tool_and_roles_named() -> None:
    verdict = evaluate(RULES, "acme", ["member"], "delegate_task", {}, ROOT)
    assert verdict.verdict == "deny"
    assert verdict.reason == "no rule allows delegate_task for roles [member]"
    assert verdict.policy_ids == ()


def test_a_person_without_a_listed_role_is_denied() -> None:
    verdict = evaluate(RULES, "acme", ["guest"], "terminal", {}, ROOT)
    assert (verdict.verdict, verdict.reason) == ("deny", "no rule allows terminal for roles [guest]")


def test_an_unknown_tenant_is_denied() -> None:
    verdict = evaluate(RULES, "initech", ["admin"], "todo", {}, ROOT)
    assert verdict.verdict == "deny"
    assert "initech" in verdict.reason


def test_a_tenant_with_no_rules_denies_everything() -> None:
    assert evaluate(RULES, "globex", ["admin"], "todo", {}, ROOT).verdict == "deny"


def test_the_engine_interface_reports_its_version_and_decides() -> None:
    engine = RuleEngine(RULES)
    assert engine.version == "test.1"
    assert engine.decide(request_facts("acme", ("member",), "read_file", {"path": "a"}, ROOT)).verdict == "allow"


def test_the_default_rules_make_the_demo_work() -> None:
    rules = load_rule_file(DEFAULT_FILE)
    root = PurePosixPath("/home/alice/.local/share/caduceus/workspaces/acme/default")
    assert evaluate(rules, "acme", ["member"], "terminal", {"command": "ls"}, root).verdict == "allow"
    for path in ("/etc/caduceus-demo.txt", "../x"):
        verdict = evaluate(rules, "acme", ["member"], "write_file", {"path": path, "content": "hi"}, root)
        assert (verdict.verdict, verdict.policy_ids) == ("deny", ("writes-stay-in-workspace",))
    assert evaluate(rules, "acme", ["member"], "write_file", {"path": "notes.txt", "content": "hi"},
                    root).verdict == "allow"
    assert evaluate(rules, "acme", ["admin"], "patch",
                    {"mode": "replace", "path": "../../x", "old_string": "a", "new_string": "b"},
                    root).verdict == "deny"
