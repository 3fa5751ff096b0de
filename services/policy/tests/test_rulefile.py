"""Loading the rule file: mistakes are reported with the file, the rule and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from caduceus_policy.rulefile import RuleFileError, load_rule_file, parse_rules

GOOD_RULE = "{id: r1, effect: allow, tools: [terminal]}"


def rules_text(rule: str = GOOD_RULE, version: str = '"v1"') -> str:
    return f"version: {version}\ntenants:\n  acme:\n    rules:\n      - {rule}\n"


def error_for(text: str) -> str:
    with pytest.raises(RuleFileError) as caught:
        parse_rules(text, source="/etc/caduceus/policy.yaml")
    message = str(caught.value)
    assert "\n" not in message
    assert "/etc/caduceus/policy.yaml" in message
    return message


def test_a_good_file_loads_with_its_version(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(rules_text())
    rules = load_rule_file(path)
    assert rules.version == "v1"
    assert [rule.id for rule in rules.tenants["acme"]] == ["r1"]


def test_a_missing_file_says_which_setting_to_fix(tmp_path: Path) -> None:
    with pytest.raises(RuleFileError, match="CADUCEUS_POLICY_FILE") as caught:
        load_rule_file(tmp_path / "nope.yaml")
    assert str(tmp_path / "nope.yaml") in str(caught.value)


def test_broken_yaml_names_the_line() -> None:
    assert "line 3" in error_for('version: "v1"\ntenants:\n  acme: {rules: [}\n')


def test_an_unknown_effect_names_the_rule_and_the_allowed_values() -> None:
    message = error_for(rules_text("{id: shell-ok, effect: permit, tools: [terminal]}"))
    assert "tenant 'acme'" in message and "rule 'shell-ok'" in message
    assert "use `allow`, `deny` or `approve`" in message


def test_an_unknown_fact_lists_the_known_facts() -> None:
    message = error_for(rules_text("{id: r, effect: deny, tools: [terminal], when: {command_is_rm: true}}"))
    assert "command_is_rm" in message and "path_outside_workspace" in message


def test_a_fact_with_the_wrong_type_is_refused() -> None:
    rule = "{id: r, effect: deny, tools: [t], when: {path_outside_workspace: 'no'}}"
    assert "takes a bool" in error_for(rules_text(rule))


def test_a_misspelled_key_is_refused_rather_than_ignored() -> None:
    # A typo like `role:` must not silently turn a member-only rule into an any-role rule.
    message = error_for(rules_text("{id: r, effect: allow, role: [admin], tools: [terminal]}"))
    assert "unknown key(s) ['role']" in message


def test_a_rule_without_tools_is_refused() -> None:
    assert "`tools` must be a non-empty list" in error_for(rules_text("{id: r, effect: allow, tools: []}"))


def test_a_rule_without_an_id_is_refused_by_position() -> None:
    message = error_for(rules_text("{effect: allow, tools: [terminal]}"))
    assert "rule #1" in message and "`id`" in message


def test_duplicate_rule_ids_are_refused() -> None:
    text = rules_text(GOOD_RULE) + f"      - {GOOD_RULE}\n"
    assert "unique" in error_for(text)


def test_a_version_that_is_not_a_string_says_to_quote_it() -> None:
    assert "quoted string" in error_for(rules_text(version="2026-11-24"))


def test_an_invalid_tenant_name_is_refused() -> None:
    assert "tenant names" in error_for('version: "v1"\ntenants:\n  Acme.Corp:\n    rules: []\n')


def test_a_file_that_is_not_a_mapping_is_refused() -> None:
    assert "expected a mapping" in error_for("- just\n- a list\n")
