"""Policy packs: YAML and raw Cedar, checked on load with the file, line and fix; the shipped pack's own tests."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from caduceus_policy.engine import engine_from_files, load_engine
from caduceus_policy.facts import request_facts
from caduceus_policy.pack import PackError, load_pack, parse_pack
from caduceus_policy.pack.cases import run_cases

DEFAULT_POLICY = Path(__file__).resolve().parents[3] / "libs/embedded/src/caduceus_embedded/defaults/policy.yaml"
ROOT = PurePosixPath("/srv/caduceus/workspaces/acme/default")


def pack_with(rules: str, extra: str = "") -> dict[str, str]:
    return {"policy.yaml": f'version: "v1"\ntenants:\n  acme:\n{extra}    rules:\n{rules}'}


def error_for(files: dict[str, str]) -> str:
    with pytest.raises(PackError) as caught:
        engine_from_files(files, origin="/etc/caduceus")
    message = str(caught.value)
    assert "\n" not in message
    return message


def decide(files: dict[str, str], tool: str, args: dict, *, roles: tuple[str, ...] = ("member",),
           user: str = "alice", tenant: str = "acme"):
    return engine_from_files(files).decide(request_facts(tenant, roles, tool, args, ROOT, user=user))


def test_the_shipped_pack_passes_its_own_tests() -> None:
    engine = load_engine(DEFAULT_POLICY)
    results = run_cases(engine, engine.pack.tests)
    assert len(results) >= 15
    assert [r.case.name for r in results if not r.passed] == []


@pytest.mark.parametrize(
    ("rules", "line", "says"),
    [("      - {id: ok, effect: alow, tools: [x]}\n", 5, "use `allow`, `deny` or `approve`"),
     ("      - {id: r, effect: deny, tools: [t], when: {command_is_rm: true}}\n", 5, "unknown fact 'command_is_rm'"),
     ("      - {id: r, effect: deny, tools: [t], when: {destructive: 'yes'}}\n", 5, "write destructive: true"),
     ("      - {id: r, effect: allow, role: [admin], tools: [terminal]}\n", 5, "unknown key `role` in a rule"),
     ("      - {id: r, effect: allow, tools: []}\n", 5, "`tools` must be a non-empty list"),
     ("      - {id: r, effect: allow, tools: ['mcp_?']}\n", 5, "`?` and `[...]` are not supported"),
     ("      - {effect: allow, tools: [terminal]}\n", 5, "give the rule an `id`"),
     ("      - {id: r, effect: allow, tools: [a]}\n      - {id: r, effect: deny, tools: [b]}\n", 6, "unique"),
     ("      - {id: r, effect: approve, tools: [a]}\n", 5, "name the approver group"),
     ("      - {id: r, effect: approve, tools: [a], approvers: x, timeout: soon}\n", 5, "`timeout` is how long"),
     ("      - {id: r, effect: allow, tools: [a], quorum: 2}\n", 5, "only belongs to a rule with `effect: approve`"),
     ("      - {id: r, effect: deny, tools: [a], when: {binaries: {some_of: [rm]}}}\n", 5, "takes one operator"),
     ("      - id: r\n        effect: allow\n        tools: [a]\n        tools: [b]\n", 8, "given twice")],
)
def test_a_bad_rule_is_refused_with_the_file_line_and_fix(rules: str, line: int, says: str) -> None:
    message = error_for(pack_with(rules))
    assert message.startswith(f"/etc/caduceus/policy.yaml:{line}: ")
    assert says in message


def test_broken_yaml_names_the_line() -> None:
    assert error_for({"policy.yaml": 'version: "v1"\ntenants:\n  acme: {rules: [}\n'}).startswith(
        "/etc/caduceus/policy.yaml:3: not valid YAML")


def test_a_version_that_is_not_a_string_says_to_quote_it() -> None:
    assert "quoted string" in error_for({"policy.yaml": "version: 2026-11-24\ntenants: {}\n"})


def test_an_invalid_tenant_name_is_refused() -> None:
    assert "tenant names" in error_for({"policy.yaml": 'version: "v1"\ntenants:\n  Acme.Corp: {rules: []}\n'})


def test_a_catastrophic_classifier_regex_is_refused() -> None:
    files = {"policy.yaml": 'version: "v1"\ntenants:\n  acme:\n    classifiers:\n      ids: {patterns: [\'(a+)+$\']}\n'}
    assert "exponential time" in error_for(files)


def test_deny_wins_then_approve_then_allow_and_nothing_permits_by_default() -> None:
    files = pack_with(
        "      - {id: shell, effect: allow, roles: [member], tools: [terminal]}\n"
        "      - {id: no-sudo, effect: deny, tools: [terminal], when: {binaries: [sudo]}}\n"
        "      - {id: rm-asks, effect: approve, tools: [terminal], when: {destructive: true}}\n",
        "    approvals: {approvers: sre, timeout: 5m}\n")
    assert decide(files, "terminal", {"command": "ls"}).verdict == "allow"
    assert decide(files, "terminal", {"command": "sudo rm -rf build"}).policy_ids == ("no-sudo",)
    approve = decide(files, "terminal", {"command": "rm -rf build"})
    assert (approve.verdict, approve.approver_group, approve.approval_timeout_s) == ("approve", "sre", 300)
    # An approval rule never grants what no rule allows.
    assert decide(files, "terminal", {"command": "rm -rf build"}, roles=("guest",)).verdict == "deny"
    nothing = decide(files, "read_file", {"path": "x"})
    assert (nothing.verdict, nothing.reason) == ("deny", "no rule allows read_file for roles [member]")


def test_operators_on_set_facts() -> None:
    files = pack_with(
        "      - {id: web, effect: allow, tools: [web_extract]}\n"
        "      - {id: only-docs, effect: deny, tools: [web_extract], "
        "when: {url_hosts: {not_all_in: [docs.python.org, pypi.org]}}}\n")
    assert decide(files, "web_extract", {"urls": ["https://pypi.org/x"]}).verdict == "allow"
    denied = decide(files, "web_extract", {"urls": ["https://pypi.org/x", "https://evil.example/"]})
    assert denied.policy_ids == ("only-docs",)


def test_users_and_approval_modes() -> None:
    files = pack_with(
        "      - {id: all, effect: allow, tools: ['*']}\n"
        "      - {id: no-carol-browse, effect: deny, users: [carol], tools: ['browser_*']}\n",
        "    approvals: {approvers: leads, quorum: 2}\n"
        "    approval_modes: {bob: always-ask, alice: ask-when-risky, dave: never}\n")
    assert decide(files, "todo", {}, user="bob").verdict == "approve"
    assert decide(files, "todo", {}, user="alice").verdict == "allow"
    risky = decide(files, "terminal", {"command": "rm -rf build"}, user="alice")
    assert (risky.verdict, risky.quorum, risky.policy_ids[0]) == ("approve", 2, "approval-mode:alice")
    assert decide(files, "terminal", {"command": "rm -rf build"}, user="dave").verdict == "allow"
    assert decide(files, "browser_navigate", {"url": "https://x.org"}, user="carol").verdict == "deny"


def decide_as(files: dict[str, str], tool: str, args: dict, *, user: str, mode: str | None):
    """A decision for a person whose session grant carries their tenants.yaml approval mode."""
    return engine_from_files(files).decide(request_facts("acme", ("member",), tool, args, ROOT, user=user,
                                                         approval_mode=mode))


def test_a_persons_own_approval_mode_from_their_grant_adds_approvals_the_stricter_way() -> None:
    files = pack_with("      - {id: all, effect: allow, tools: ['*']}\n",
                      "    approvals: {approvers: leads, quorum: 2}\n    approval_modes: {bob: always-ask}\n")
    asked = decide_as(files, "todo", {}, user="erin", mode="always-ask")
    assert (asked.verdict, asked.approver_group, asked.policy_ids[0]) == ("approve", "leads", "approval-mode:erin")
    assert decide_as(files, "todo", {}, user="erin", mode="ask-when-risky").verdict == "allow"
    assert decide_as(files, "terminal", {"command": "rm -rf build"}, user="erin", mode="ask-when-risky").verdict \
        == "approve"
    assert decide_as(files, "terminal", {"command": "rm -rf build"}, user="erin", mode="never").verdict == "allow"
    # The pack's always-ask for bob stands even when his grant says never: the stricter mode wins.
    assert decide_as(files, "todo", {}, user="bob", mode="never").verdict == "approve"


def test_an_approval_mode_with_no_approvers_in_the_pack_denies_and_says_what_to_add() -> None:
    files = pack_with("      - {id: all, effect: allow, tools: ['*']}\n")
    denied = decide_as(files, "todo", {}, user="erin", mode="always-ask")
    assert denied.verdict == "deny" and "add an `approvals` section" in denied.reason


def test_classifiers_and_mcp_annotations_come_from_the_tenant() -> None:
    files = pack_with(
        "      - {id: all, effect: allow, tools: ['*']}\n"
        "      - {id: no-pii-out, effect: deny, tools: ['mcp__*'], when: {data_classes: [pii]}}\n"
        "      - {id: writes-ask, effect: approve, tools: ['mcp__*'], when: {mcp_read_only: false}}\n",
        "    approvals: {approvers: admins}\n"
        "    classifiers:\n      pii: {patterns: ['\\b\\d{3}-\\d{2}-\\d{4}\\b'], words: [passport]}\n"
        "    mcp_servers:\n      github: {tools: {get_issue: {read_only: true}}}\n")
    assert decide(files, "mcp__github__get_issue", {"n": 1}).verdict == "allow"
    assert decide(files, "mcp__github__create_issue", {"t": "x"}).verdict == "approve"
    pii = decide(files, "mcp__github__get_issue", {"body": "ssn 123-45-6789"})
    assert pii.policy_ids == ("no-pii-out",) and "pii: 123-45-6789" in pii.reason


def test_raw_cedar_beside_yaml_is_checked_and_used(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text('version: "v2"\ntenants:\n  acme:\n    cedar: [acme.cedar]\n'
                                          "    rules:\n      - {id: all, effect: allow, tools: ['*']}\n")
    (tmp_path / "acme.cedar").write_text(
        '// Interns do not use the network.\n'
        '@id("interns-offline")\n@reason("interns work offline")\n'
        'forbid (principal, action, resource) when { context.roles.contains("intern") && context.network };\n\n'
        '@id("deploys-ask")\n@approvers("release")\n@quorum("2")\n@timeout("600")\n'
        'forbid (principal, action, resource) when { context.binaries.contains("kubectl") };\n')
    engine = load_engine(tmp_path / "policy.yaml")
    intern = engine.decide(request_facts("acme", ("intern",), "terminal", {"command": "curl https://x.org"}, ROOT))
    assert (intern.verdict, intern.policy_ids, intern.reason) == ("deny", ("interns-offline",), "interns work offline")
    deploy = engine.decide(request_facts("acme", ("dev",), "terminal", {"command": "kubectl apply -f x"}, ROOT))
    assert (deploy.verdict, deploy.approver_group, deploy.quorum) == ("approve", "release", 2)
    assert load_pack(tmp_path / "policy.yaml").files.keys() == {"policy.yaml", "acme.cedar"}


def test_raw_cedar_mistakes_name_the_file_and_line(tmp_path: Path) -> None:
    files = {"policy.yaml": 'version: "v"\ntenants:\n  acme:\n    cedar: [x.cedar]\n',
             "x.cedar": 'permit (principal, action, resource);\n\n// typo below\n'
                        'forbid (principal, action, resource) when { context.destrutive };\n'}
    message = error_for(files)
    assert message.startswith("/etc/caduceus/x.cedar:4: ") and "destrutive" in message
    files["x.cedar"] = 'permit (principal, action, resource);\nforbid (principal, action, resource) when { };\n'
    assert error_for(files).startswith("/etc/caduceus/x.cedar:2: Cedar does not parse")


def test_a_cedar_file_no_tenant_uses_is_refused() -> None:
    files = {"policy.yaml": 'version: "v"\ntenants: {}\n', "stray.cedar": "permit (principal, action, resource);"}
    assert "add `cedar: [stray.cedar]`" in error_for(files)


def test_a_pack_of_raw_cedar_alone_applies_to_every_tenant(tmp_path: Path) -> None:
    (tmp_path / "all.cedar").write_text('@id("acme-todo")\npermit (principal, action, resource) when '
                                        '{ context.tenant == "acme" && context.tool == "todo" };\n')
    engine = load_engine(tmp_path / "all.cedar")
    assert engine.version.startswith("cedar-")
    assert engine.decide(request_facts("acme", (), "todo", {}, ROOT)).verdict == "allow"
    assert engine.decide(request_facts("globex", (), "todo", {}, ROOT)).verdict == "deny"


def test_a_directory_pack_merges_its_files_and_checks_they_agree(tmp_path: Path) -> None:
    (tmp_path / "acme.yaml").write_text('version: "v3"\ntenants:\n  acme:\n    rules: '
                                        "[{id: a, effect: allow, tools: [todo]}]\n")
    (tmp_path / "globex.yaml").write_text('version: "v3"\ntenants:\n  globex:\n    rules: '
                                          "[{id: g, effect: allow, tools: [todo]}]\n")
    engine = load_engine(tmp_path)
    assert engine.version == "v3" and set(engine.tenants) == {"acme", "globex"}
    (tmp_path / "globex.yaml").write_text('version: "v4"\ntenants: {}\n')
    with pytest.raises(PackError, match="disagree on `version`"):
        load_engine(tmp_path)


def test_limits_are_checked_and_apply_by_tool_and_role() -> None:
    files = pack_with("      - {id: all, effect: allow, tools: ['*']}\n",
                      "    limits:\n      - {id: shell-rate, tools: [terminal], per: user, max_calls: 3, window: 1m}\n"
                      "      - {id: tokens, per: [user], max_tokens: 1000, window: 24h}\n")
    verdict = decide(files, "terminal", {"command": "ls"})
    assert [limit.id for limit in verdict.limits] == ["shell-rate", "tokens"]
    assert [limit.id for limit in decide(files, "todo", {}).limits] == ["tokens"]
    bad = pack_with("      []\n", "    limits:\n      - {id: t, tools: [terminal], max_tokens: 5, window: 1h}\n")
    bad["policy.yaml"] = bad["policy.yaml"].replace("    rules:\n      []\n", "    rules: []\n")
    assert "token and cost budgets count model usage" in error_for(bad)


def test_every_rule_compiles_to_cedar_that_cedar_accepts() -> None:
    engine = load_engine(DEFAULT_POLICY)
    text = engine.cedar_text("acme")
    assert '@id("writes-stay-in-workspace")' in text and "forbid" in text and "permit" in text
    assert parse_pack({"p.yaml": 'version: "x"\ntenants: {}\n'}).version == "x"


def test_the_readme_example_pack_loads_and_passes_its_test(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    example = readme.split("## Policy", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "policy.yaml").write_text(example)
    (tmp_path / "acme-extra.cedar").write_text('@id("no-friday-deploys")\nforbid (principal, action, resource) '
                                               'when { context.binaries.contains("kubectl") };\n')
    engine = load_engine(tmp_path / "policy.yaml")
    assert [r.passed for r in run_cases(engine, engine.pack.tests)] == [True]
