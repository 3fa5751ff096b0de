"""`caduceus policy check|test|eval|diff|publish` as an operator runs them, on real files and a real audit store."""

from __future__ import annotations

import asyncio
import json
import shutil
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from caduceus.cli import app
from caduceus_audit import AuditStore
from caduceus_audit.domain.entries import entry_for_message
from caduceus_bus import BusSettings, EventConnection
from caduceus_contracts import (
    Decision,
    SessionGrant,
    SignedDecision,
    SignedGrant,
    Signer,
    ToolCallDecided,
    ToolCallRequested,
    call_digest,
    subjects,
    utcnow,
)
from caduceus_policy.adapters.packs import LIVE, SHADOW, PackStore

runner = CliRunner()
DEFAULT_PACK = Path(str(resources.files("caduceus_embedded") / "defaults" / "policy.yaml"))


def run(*args: str) -> Any:
    return runner.invoke(app, ["policy", *args])


@pytest.fixture()
def state(tmp_path: Path) -> Path:
    """A state dir with no stack in it: eval must work from files alone."""
    return tmp_path / "state"


def test_eval_explains_the_demo_decisions_for_alice_without_a_stack(state: Path) -> None:
    allowed = run("eval", "--tenant", "acme", "--user", "alice", "--tool", "terminal", "--args",
                  '{"command": "echo hello from the executor && pwd"}', "--json", "--state-dir", str(state))
    assert allowed.exit_code == 0, allowed.output
    body = json.loads(allowed.stdout)
    assert (body["decision"], body["roles"], body["pack_version"]) == ("allow", ["member"], "2026-12-04.1")
    denied = json.loads(run("eval", "--tenant", "acme", "--user", "alice", "--tool", "write_file", "--args",
                            '{"path": "/etc/caduceus-demo.txt", "content": "x"}', "--json",
                            "--state-dir", str(state)).stdout)
    assert (denied["decision"], denied["policy_ids"]) == ("deny", ["writes-stay-in-workspace"])
    assert denied["facts"]["writes_outside_workspace"] is True


def test_eval_text_names_the_decision_policies_and_approvers(state: Path) -> None:
    result = run("eval", "--tenant", "acme", "--user", "bob", "--tool", "terminal", "--args",
                 '{"command": "sudo rm -rf /var/log"}', "--state-dir", str(state))
    assert result.exit_code == 0
    assert result.stdout.startswith("approve: needs approval by admin (quorum 1, within 15m)")
    policies = next(line for line in result.stdout.splitlines() if line.strip().startswith("policies:"))
    assert "destructive-commands-need-approval" in policies and "privilege-raising-needs-approval" in policies


def test_eval_uses_the_state_dirs_own_files_when_it_has_them(state: Path) -> None:
    state.mkdir()
    (state / "tenants.yaml").write_text("tenants:\n  acme:\n    display_name: Acme\n    users:\n"
                                        "      alice: {email: alice@acme.example, roles: [admin]}\n")
    (state / "policy.yaml").write_text('version: "mine"\ntenants:\n  acme:\n    rules:\n'
                                       "      - {id: admins-delegate, effect: allow, roles: [admin], "
                                       "tools: [delegate_task]}\n")
    body = json.loads(run("eval", "--tenant", "acme", "--user", "alice", "--tool", "delegate_task", "--json",
                          "--state-dir", str(state)).stdout)
    assert (body["decision"], body["pack_version"], body["roles"]) == ("allow", "mine", ["admin"])


@pytest.mark.parametrize(
    ("args", "says"),
    [(["--user", "mallory"], "user 'mallory' is not a member of tenant 'acme'"),
     (["--user", "alice", "--args", "{not json"], "--args is not JSON"),
     (["--user", "alice", "--args", "[1]"], "--args must be a JSON object")],
)
def test_eval_mistakes_say_what_to_fix(state: Path, args: list[str], says: str) -> None:
    result = run("eval", "--tenant", "acme", "--tool", "terminal", "--state-dir", str(state), *args)
    assert result.exit_code != 0
    assert says in result.stderr


def test_check_reports_file_line_and_fix_and_test_runs_the_cases(tmp_path: Path) -> None:
    ok = run("check", str(DEFAULT_PACK))
    assert ok.exit_code == 0 and "pack 2026-12-04.1" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text('version: "1"\ntenants:\n  acme:\n    rules:\n      - {id: x, effect: allow, tools: [t], '
                   "when: {destrutive: true}}\n")
    result = run("check", str(bad))
    assert result.exit_code == 1
    assert f"{bad}:5: tenant 'acme', rule 'x' (#1): unknown fact 'destrutive'" in result.stderr
    passed = run("test", str(DEFAULT_PACK))
    assert passed.exit_code == 0 and "28 passed, 0 failed" in passed.stdout


def test_check_reports_every_bad_rule_tenant_and_case_of_a_pack_in_one_run(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text('version: "1"\ntenants:\n  acme:\n    rules:\n'
                   "      - {id: x, effect: allow, tools: [t], when: {destrutive: true}}\n"
                   "      - {id: y, effect: maybe, tools: [t]}\n"
                   "      - {id: z, effect: allow, tools: [t]}\n"
                   "      - {id: z, effect: deny, tools: [u]}\n"
                   "  Bad Tenant:\n    rules: []\n"
                   "tests:\n  - {name: a, tenant: acme, tool: t, expect: sometimes}\n")
    result = run("check", str(bad))
    assert result.exit_code == 1
    said = " ".join(result.stderr.split())
    assert "5 problems" in said
    for expected in (f"{bad}:5: tenant 'acme', rule 'x' (#1): unknown fact 'destrutive'",
                     f"{bad}:6: tenant 'acme', rule 'y' (#2): `effect` is 'maybe'",
                     f"{bad}:8: tenant 'acme', rule 'z': rule ids must be unique",
                     f"{bad}:9: tenant 'Bad Tenant': tenant names use", f"{bad}:12: test 'a': `expect` is"):
        assert expected in said


def test_a_tests_file_with_a_wrong_expectation_fails_and_says_which(tmp_path: Path) -> None:
    shutil.copy(DEFAULT_PACK, tmp_path / "policy.yaml")
    (tmp_path / "more.tests.yaml").write_text(
        "pack: policy.yaml\ncases:\n"
        "  - {name: carol may delegate, tenant: acme, user: carol, roles: [admin], tool: delegate_task,"
        " args: {goal: x}, expect: allow}\n"
        "  - {name: alice reads her notes, tenant: acme, user: alice, roles: [member], tool: read_file,"
        " args: {path: notes.md}, expect: deny}\n")
    result = run("test", str(tmp_path / "more.tests.yaml"))
    assert result.exit_code == 1
    assert "PASS carol may delegate" in result.stdout
    assert "FAIL alice reads her notes" in result.stdout and "expected deny, got allow" in result.stdout
    assert "1 passed, 1 failed" in result.stdout


def recorded(store_url: str, calls: list[tuple[str, dict[str, Any], str, tuple[str, ...]]]) -> None:
    identity, policy = Signer.generate("identity"), Signer.generate("policy")
    entries = []
    for tool, args, user, roles in calls:
        now = utcnow()
        grant = SignedGrant.issue(identity, SessionGrant(tenant="acme", workspace="default", user=user, roles=roles,
                                                         channel="cli", session_id="s1", issued_at=now,
                                                         expires_at=now + timedelta(minutes=5)))
        digest = call_digest(tenant="acme", workspace="default", session="s1", tool=tool, args=args)
        request = ToolCallRequested(tenant="acme", grant=grant, workspace="default", session_id="s1", tool=tool,
                                    args=args, digest=digest)
        decision = Decision(tenant="acme", workspace="default", session_id="s1", call_id=request.call_id, tool=tool,
                            digest=digest, verdict="allow", reason="r", pack_version="2026-12-04.1",
                            expires_at=now + timedelta(minutes=1))
        decided = ToolCallDecided(tenant="acme", call_id=request.call_id, workspace="default",
                                  decision=SignedDecision.issue(policy, decision))
        for subject, event in ((subjects.tool_requested("acme"), request), (subjects.tool_decided("acme"), decided)):
            entries.append(entry_for_message(subject, event.model_dump_json().encode(), {}, stream_seq=len(entries) + 1,
                                             received_at=datetime.now(UTC)))
    store = AuditStore(store_url)
    store.append_batch(entries)
    store.close()


def test_diff_shows_what_a_new_pack_would_change_on_recorded_calls(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    recorded(url, [("terminal", {"command": "ls -la"}, "alice", ("member",)),
                   ("terminal", {"command": "git push --force origin main"}, "alice", ("member",)),
                   ("read_file", {"path": "notes.md"}, "bob", ("member",))])
    stricter = tmp_path / "stricter.yaml"
    stricter.write_text(DEFAULT_PACK.read_text().replace('version: "2026-12-04.1"', 'version: "2026-11-27.1"').replace(
        "      - id: destructive-commands-need-approval\n        effect: approve",
        "      - id: destructive-commands-need-approval\n        effect: deny"))
    result = run("diff", str(DEFAULT_PACK), str(stricter), "--db", url, "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert (body["calls"], body["verdicts_changed"], body["new_version"]) == (3, 1, "2026-11-27.1")
    change = body["changes"][0]
    assert (change["tool"], change["old"], change["new"], change["new_policy_ids"]) == (
        "terminal", "approve", "deny", ["destructive-commands-need-approval"])
    text = run("diff", str(DEFAULT_PACK), str(stricter), "--db", url)
    assert "3 recorded call(s); 1 would get another decision" in text.stdout


def test_diff_without_an_audit_store_says_how_to_get_one(tmp_path: Path) -> None:
    result = run("diff", str(DEFAULT_PACK), str(DEFAULT_PACK), "--state-dir", str(tmp_path))
    assert result.exit_code == 2 and "no audit store at" in result.stderr


def test_publish_puts_a_tested_pack_live_or_in_shadow_and_refuses_a_failing_one(nats_server: Any,
                                                                                 tmp_path: Path) -> None:
    published = run("publish", str(DEFAULT_PACK), "--nats-url", nats_server.url)
    assert published.exit_code == 0, published.output
    assert "published pack 2026-12-04.1 as the live pack" in published.stdout
    shadow = run("publish", str(DEFAULT_PACK), "--shadow", "--nats-url", nats_server.url)
    assert shadow.exit_code == 0
    failing = tmp_path / "failing.yaml"
    failing.write_text(DEFAULT_PACK.read_text().replace("expect: deny, expect_ids: [secrets-stay-in]",
                                                        "expect: allow"))
    refused = run("publish", str(failing), "--nats-url", nats_server.url)
    assert refused.exit_code == 1 and "tests fail" in refused.stderr

    async def stored() -> tuple[Any, Any]:
        conn = await EventConnection.connect(BusSettings(nats_url=nats_server.url), "cli-test")
        store = await PackStore.open(conn.js)
        result = (await store.get(LIVE), await store.get(SHADOW))
        await conn.close()
        return result

    live, candidate = asyncio.run(stored())
    assert live.version == candidate.version == "2026-12-04.1" and "policy.yaml" in live.files
    assert run("stop-shadow", "--nats-url", nats_server.url).exit_code == 0
    assert asyncio.run(stored())[1] is None


def test_eval_prompt_shows_the_route_data_classes_and_redaction_of_a_model_call(state: Path) -> None:
    state.mkdir()
    (state / "policy.yaml").write_text(
        'version: "models-1"\ntenants:\n  acme:\n'
        "    classifiers: {classified: {words: [top secret]}, customer_data: {patterns: ['CUST-[0-9]{6}']}}\n"
        "    models:\n      default: outside\n"
        "      routes: [{id: classified-stays-home, upstream: self-hosted, data_classes: [classified]}]\n"
        "      prompt_rules: {secret: redact, customer_data: deny}\n")
    def evaluate(prompt: str) -> dict:
        result = run("eval", "--tenant", "acme", "--user", "alice", "--prompt", prompt, "--json",
                     "--state-dir", str(state))
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    home = evaluate("summarise this TOP SECRET memo; key AKIAIOSFODNN7EXAMPLE")
    assert (home["decision"], home["upstream"]) == ("allow", "self-hosted")
    assert home["data_classes"] == ["secret", "classified"] and home["redact_prompt"] == ["secret"]
    assert home["policy_ids"][0] == "model-route:classified-stays-home"
    assert evaluate("plan my week")["upstream"] == "outside"
    denied = evaluate("who is CUST-123456")
    assert (denied["decision"], denied["upstream"]) == ("deny", None) and "customer_data" in denied["reason"]
    text = run("eval", "--tenant", "acme", "--user", "alice", "--prompt", "TOP SECRET", "--state-dir", str(state))
    assert text.stdout.startswith("allow (model call): allowed to upstream self-hosted by route classified-stays")


def test_eval_wants_a_tool_or_a_prompt_not_both(state: Path) -> None:
    for args in ([], ["--tool", "terminal", "--prompt", "hi"]):
        result = run("eval", "--tenant", "acme", "--user", "alice", "--state-dir", str(state), *args)
        assert result.exit_code == 2 and "give --tool (a tool call) or --prompt (a model call)" in result.stderr
