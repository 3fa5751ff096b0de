"""The CLI a script can rely on (issue 17, item 7): every data-printing command takes --json and prints one
parseable document on stdout; exit codes mean the same everywhere (0 ok, 1 what was checked is bad, 2 usage, an
unreadable file or an unreachable stack); hints repeat the options the user gave. All without a running stack."""

from __future__ import annotations

import json
import os
import shutil
from importlib import resources
from pathlib import Path

import pytest
from typer.testing import CliRunner

from caduceus.cli import app
from caduceus_audit import AuditStore
from caduceus_audit.testing import AUDIT, checkpoint, governed_session, record_published
from caduceus_embedded import StackInfo
from caduceus_embedded.ports import free_port
from caduceus_embedded.stackinfo import write_stack_info

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = Path(str(resources.files("caduceus_embedded") / "defaults"))
PACK = DEFAULTS / "policy.yaml"
SANDBOX = ROOT / "infra" / "sandbox" / "strict.yaml"
BAD_PACK = ('version: "1"\ntenants:\n  acme:\n    rules:\n      - {id: x, effect: allow, tools: [t], '
            "when: {destrutive: true}}\n")
FAILING_TESTS = ("pack: policy.yaml\ncases:\n  - {name: alice reads her notes, tenant: acme, user: alice, "
                 "roles: [member], tool: read_file, args: {path: notes.md}, expect: deny}\n")
BAD_TENANTS = "tenants:\n  acme:\n    display_name: Acme\n    users:\n      dana: {email: d@x, roles: [boss]}\n"
BAD_SANDBOX = "version: 1\nname: broken\nnetwork: {egress: everywhere}\n"
SLACK_YAML = ("workspaces:\n  T0ACME:\n    tenant: acme\n    bot_token: {secret}\n    signing_secret: {secret}\n"
              "    service_account_key: {secret}\n")


def filled(args: list, state: Path, files: Path) -> list[str]:
    return [str(a).replace("{state}", str(state)).replace("{files}", str(files)) for a in args]


def caduceus(*args: str | Path):
    return CliRunner().invoke(app, [str(arg) for arg in args], catch_exceptions=False, env={"COLUMNS": "80"})


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture()
def state(tmp_path: Path) -> Path:
    """A state dir as a stopped stack leaves it: tenants.yaml, audit.db with acme's session, keys/audit.pub."""
    root = tmp_path / "state"
    (root / "keys").mkdir(parents=True)
    (root / "keys" / "audit.pub").write_bytes(AUDIT.public_pem())
    shutil.copy(DEFAULTS / "tenants.yaml", root / "tenants.yaml")
    store = AuditStore(f"sqlite:///{root}/audit.db")
    record_published(store, governed_session("acme", "s1"))
    store.checkpoints.add(checkpoint(store, "acme", 0, 10))
    store.close()
    return root


@pytest.fixture()
def files(tmp_path: Path) -> Path:
    """Good and bad inputs side by side: a pack and tests that fail on it, a broken pack, tenants file, sandbox."""
    shutil.copy(PACK, tmp_path / "policy.yaml")
    (tmp_path / "failing.tests.yaml").write_text(FAILING_TESTS)
    (tmp_path / "orphan.tests.yaml").write_text(FAILING_TESTS.replace("pack: policy.yaml\n", ""))
    (tmp_path / "bad-pack.yaml").write_text(BAD_PACK)
    (tmp_path / "bad-tenants.yaml").write_text(BAD_TENANTS)
    (tmp_path / "bad-sandbox.yaml").write_text(BAD_SANDBOX)
    (tmp_path / "slack-acme.key").write_text("cad_sa_key\n")
    (tmp_path / "slack.yaml").write_text(SLACK_YAML.format(secret="file:slack-acme.key"))
    (tmp_path / "bad-slack.yaml").write_text(SLACK_YAML.format(secret="xoxb-pasted-here"))
    shutil.copy(DEFAULTS / "tenants.yaml", tmp_path / "tenants.yaml")
    return tmp_path


# Every command that prints data, with --json: (arguments, exit code, a field the document must have).
# {state} is the state dir, {files} the inputs dir.
JSON_COMMANDS = [
    (["tenants", "list", "--state-dir", "{state}"], 0, "tenants"),
    (["tenants", "show", "acme", "--state-dir", "{state}"], 0, "users"),
    (["tenants", "apply", "{files}/tenants.yaml", "--state-dir", "{state}"], 0, "changes"),
    (["whoami", "--token", "not-a-token", "--state-dir", "{state}"], 1, "refused"),
    (["policy", "check", "{files}/policy.yaml"], 0, "version"),
    (["policy", "check", "{files}/bad-pack.yaml"], 1, "problem"),
    (["policy", "test", "{files}/policy.yaml"], 0, "cases"),
    (["policy", "test", "{files}/failing.tests.yaml"], 1, "cases"),
    (["policy", "eval", "--tenant", "acme", "--user", "alice", "--tool", "terminal", "--args",
      '{"command": "rm -rf build"}', "--state-dir", "{state}"], 0, "decision"),
    (["policy", "diff", "{files}/policy.yaml", "{files}/policy.yaml", "--state-dir", "{state}"], 0, "changes"),
    (["sandbox", "check", SANDBOX], 0, "enforceable_here"),
    (["sandbox", "check", "{files}/bad-sandbox.yaml"], 1, "problem"),
    (["slack", "check", "{files}/slack.yaml"], 0, "workspaces"),
    (["slack", "check", "{files}/bad-slack.yaml"], 1, "problem"),
    (["audit", "verify", "--state-dir", "{state}"], 0, "tenants"),
    (["audit", "replay", "--pack", "{files}/bad-pack.yaml", "--state-dir", "{state}"], 2, None),
    (["audit", "replay", "--pack", "{files}/policy.yaml", "--state-dir", "{state}"], 1, "changed"),
    (["audit", "timeline", "--session", "s1", "--state-dir", "{state}"], 0, "moments"),
    (["audit", "archive", "--before", "2026-11-20T10:00:00Z", "--to", "{files}/archive", "--state-dir", "{state}"],
     0, "tenants"),
    (["bus", "permissions"], 0, "grants"),
    (["bus", "authority", "--out", "{files}/bus"], 0, "credentials"),
    (["deployment", "secrets", "--out", "{files}/deploy"], 0, "services"),
    (["backup", "--state-dir", "{state}", "--out", "{files}/state.backup"], 0, "manifest"),
    (["identity", "service-account", "list", "--tenant", "acme", "--state-dir", "{state}"], 0, "service_accounts"),
    (["identity", "pairing", "list", "--tenant", "acme", "--state-dir", "{state}"], 0, "links"),
    (["identity", "service-account", "create", "--tenant", "acme", "--name", "ci-bot", "--platform", "slack",
      "--state-dir", "{state}"], 0, "key"),
    (["mcp", "servers", "add", "acme", "files", "--command", "python -m files_server", "--state-dir", "{state}"],
     0, "server"),
    (["mcp", "servers", "add", "acme", "bad__name", "--url", "ftp://x", "--state-dir", "{state}"], 1, None),
    (["mcp", "servers", "list", "--state-dir", "{state}"], 0, "servers"),
    (["mcp", "servers", "show", "acme", "nowhere", "--state-dir", "{state}"], 1, None),
    (["mcp", "pins", "list", "--state-dir", "{state}"], 0, "pins"),
    (["mcp", "pins", "revoke", "acme", "files", "--state-dir", "{state}"], 1, "revoked"),
    (["usage", "--by", "person,day", "--state-dir", "{state}"], 0, "rows"),
    (["policy", "eval", "--tenant", "acme", "--user", "alice", "--prompt", "hello", "--state-dir", "{state}"], 0,
     "upstream"),
]


@pytest.mark.parametrize(("args", "code", "field"), JSON_COMMANDS, ids=[" ".join(map(str, c[0][:2])) + f" {c[1]}"
                                                                        for c in JSON_COMMANDS])
def test_every_data_command_prints_one_json_document_with_json(state: Path, files: Path, args: list, code: int,
                                                                field: str | None) -> None:
    result = caduceus(*filled(args, state, files), "--json")
    assert result.exit_code == code, result.output
    if field is None:  # it could not do its job: nothing on stdout, the reason on stderr
        assert not result.stdout.strip() and result.stderr.strip()
        return
    document = json.loads(result.stdout)  # the whole of stdout: one document, no markup around it
    assert field in document


def test_json_values_are_whole_where_text_would_clip_them(state: Path, files: Path) -> None:
    timeline = json.loads(caduceus("audit", "timeline", "--session", "s1", "--state-dir", state, "--json").stdout)
    calls = [m["call"] for m in timeline["moments"] if m["call"]]
    assert calls and all(len(c["facts"]["digest"]) == 64 for c in calls if c["facts"]["digest"])
    shown = json.loads(caduceus("tenants", "show", "acme", "--state-dir", state, "--json").stdout)
    assert shown["users"]["carol"]["effective_roles"][:2] == ["admin", "member"]


# (arguments, exit code): for each command, a good input (0), a bad one (1) and one it cannot read or use (2).
EXIT_CODES = [
    (["policy", "check", "{files}/policy.yaml"], 0),
    (["policy", "check", "{files}/bad-pack.yaml"], 1),
    (["policy", "check", "{files}/missing.yaml"], 2),
    (["policy", "test", "{files}/policy.yaml"], 0),
    (["policy", "test", "{files}/failing.tests.yaml"], 1),
    (["policy", "test", "{files}/orphan.tests.yaml"], 2),
    (["policy", "test", "{files}/missing.yaml"], 2),
    (["policy", "diff", "{files}/policy.yaml", "{files}/policy.yaml", "--state-dir", "{files}/nowhere"], 2),
    (["sandbox", "check", SANDBOX], 0),
    (["sandbox", "check", "{files}/bad-sandbox.yaml"], 1),
    (["sandbox", "check", "{files}/missing.yaml"], 2),
    (["slack", "check", "{files}/slack.yaml"], 0),
    (["slack", "check", "{files}/bad-slack.yaml"], 1),
    (["slack", "check", "{files}/missing.yaml"], 2),
    (["tenants", "apply", "{files}/tenants.yaml", "--state-dir", "{state}"], 0),
    (["tenants", "apply", "{files}/bad-tenants.yaml", "--state-dir", "{state}"], 1),
    (["tenants", "apply", "{files}/missing.yaml", "--state-dir", "{state}"], 2),
    (["tenants", "list", "--tenants-file", "{files}/bad-tenants.yaml"], 1),
    (["tenants", "list", "--tenants-file", "{files}/missing.yaml"], 2),
    (["tenants", "show", "globex", "--state-dir", "{state}"], 1),
    (["whoami", "--token", "not-a-token", "--state-dir", "{state}"], 1),
    (["audit", "verify", "--state-dir", "{state}"], 0),
    (["audit", "verify", "--state-dir", "{files}/nowhere"], 2),
    (["bus", "authority", "--out", "{files}/bus", "--permissions", "{files}/bad-pack.yaml"], 1),
    (["bus", "authority", "--out", "{files}/bus", "--permissions", "{files}/missing.yaml"], 2),
    (["status", "--state-dir", "{files}/nowhere"], 2),
    (["chat", "hello", "--state-dir", "{files}/nowhere"], 2),
    (["approvals", "list", "--state-dir", "{files}/nowhere"], 2),
    (["identity", "token", "--tenant", "acme", "--user", "alice", "--state-dir", "{files}/nowhere"], 2),
    (["policy", "stop-shadow", "--nats-url", "nats://127.0.0.1:1"], 2),
    (["usage", "--state-dir", "{state}"], 0),
    (["usage", "--state-dir", "{files}/nowhere"], 2),
]


@pytest.mark.parametrize(("args", "code"), EXIT_CODES, ids=[" ".join(map(str, c[0][:3])) + f" {c[1]}" for c in EXIT_CODES])
def test_exit_codes_mean_the_same_in_every_command(state: Path, files: Path, args: list, code: int) -> None:
    result = caduceus(*filled(args, state, files))
    assert result.exit_code == code, result.output
    if code == 2:
        assert result.stderr.strip(), "a command that could not do its job says why on stderr"


def test_the_exit_codes_are_in_the_apps_help() -> None:
    said = flat(caduceus("--help").stdout)
    assert "Exit codes, the same for every command: 0 ok; 1" in said and "2 a usage error" in said
    readme = flat((ROOT / "README.md").read_text())
    assert "| 0 | " in (ROOT / "README.md").read_text() and "--json" in readme


SEVERAL_PROBLEMS = """\
tenants:
  acme:
    display_name: Acme
    memory: everyone
    users:
      dana: {email: d@x, roles: [boss]}
      erin: {email: not-an-email, roles: [member]}
    groups:
      admins: [superuser]
  globex:
    display_name: Globex
    user:
      zed: {email: z@globex.example}
"""


def test_tenants_apply_reports_every_problem_of_a_file_in_one_run_with_its_line(state: Path, tmp_path: Path) -> None:
    before = (state / "tenants.yaml").read_text()
    broken = tmp_path / "broken.yaml"
    broken.write_text(SEVERAL_PROBLEMS)
    refused = caduceus("tenants", "apply", broken, "--state-dir", state)
    assert refused.exit_code == 1
    said = flat(refused.stderr)
    assert "has 5 problem(s)" in said
    for expected in ("line 4: tenants.acme.memory: 'everyone' is not allowed",
                     "line 6: tenants.acme.users.dana.roles: user 'dana' has unknown role(s) ['boss']",
                     "line 7: tenants.acme.users.erin.email: 'not-an-email'",
                     "line 9: tenants.acme.groups.admins: group 'admins' maps to unknown role(s) ['superuser']",
                     "line 12: tenants.globex.user: unknown key"):
        assert expected in said
    as_json = json.loads(caduceus("tenants", "apply", broken, "--state-dir", state, "--json").stdout)
    assert [(p["line"], p["where"]) for p in as_json["problems"]] == [
        (4, "tenants.acme.memory"), (6, "tenants.acme.users.dana.roles"), (7, "tenants.acme.users.erin.email"),
        (9, "tenants.acme.groups.admins"), (12, "tenants.globex.user")]
    assert (state / "tenants.yaml").read_text() == before


def test_sandbox_check_reports_every_problem_of_a_policy_in_one_run(tmp_path: Path) -> None:
    policy = tmp_path / "broken.yaml"
    policy.write_text("version: 1\nname: broken\nnetwork: {egress: everywhere}\nprocess: {max_processes: lots}\n")
    refused = caduceus("sandbox", "check", policy)
    assert refused.exit_code == 1
    assert "has 2 problems" in refused.stderr
    assert "network.egress:" in refused.stderr and "process.max_processes:" in refused.stderr


def test_chat_to_a_stack_whose_bus_is_gone_exits_2_instead_of_waiting_forever(tmp_path: Path) -> None:
    stale = tmp_path / "stale"
    stale.mkdir()
    write_stack_info(StackInfo(state_dir=str(stale), pid=os.getpid(), nats_url=f"nats://127.0.0.1:{free_port()}",
                               dev_issuer_url="", temporal_address="", temporal_ui_url="", model_base_url="",
                               audit_db_url=""))
    result = caduceus("chat", "hello", "--token", "x", "--state-dir", stale)
    assert result.exit_code == 2
    assert "cannot reach NATS" in flat(result.stderr) and f"caduceus up --state-dir {stale}" in flat(result.stderr)


def test_hints_repeat_the_state_dir_the_user_gave(files: Path) -> None:
    nowhere = files / "nowhere"
    for args in (["status"], ["chat", "hello"], ["approvals", "list"], ["audit", "timeline", "--session", "s1"],
                 ["identity", "token", "--tenant", "acme", "--user", "alice"]):
        result = caduceus(*args, "--state-dir", nowhere)
        assert f"caduceus up --state-dir {nowhere}" in flat(result.stderr), (args, result.stderr)
