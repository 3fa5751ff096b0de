"""`caduceus audit` as an operator runs it, on stores built from recorded events: verify's exit codes and
messages, checkpoints kept outside catching a rewrite, replay reporting exactly the calls a changed rule
affects (with the real policy engine), exports, timelines and archives from the command line."""

from __future__ import annotations

import json
import socketserver
import threading
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path, PurePosixPath

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from caduceus.cli import app
from caduceus_audit import AuditStore
from caduceus_audit.domain.chain import link_hash
from caduceus_audit.testing import (
    AUDIT,
    IDENTITY,
    POLICY,
    Published,
    checkpoint,
    entry,
    governed_session,
    record_published,
)
from caduceus_contracts import (
    Decision,
    SessionGrant,
    SignedDecision,
    SignedGrant,
    ToolCallDecided,
    ToolCallRequested,
    call_digest,
    subjects,
)
from caduceus_policy import load_engine, request_facts

runner = CliRunner()


def caduceus(*args: str | Path):
    return runner.invoke(app, [str(arg) for arg in args], catch_exceptions=False)


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture()
def state(tmp_path: Path) -> Path:
    """A state dir as the embedded stack leaves it: audit.db with acme's session and a checkpoint, keys/audit.pub."""
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "audit.pub").write_bytes(AUDIT.public_pem())
    store = AuditStore(f"sqlite:///{tmp_path}/audit.db")
    record_published(store, governed_session("acme", "s1"))
    store.checkpoints.add(checkpoint(store, "acme", 0, 10))
    store.close()
    return tmp_path


def sql(state: Path, statement: str) -> None:
    store = AuditStore(f"sqlite:///{state}/audit.db")
    with store.engine.begin() as conn:
        conn.execute(text(statement))
    store.close()


# --- verify -----------------------------------------------------------------------------------------------------


def test_verify_exits_0_on_an_intact_trail_and_1_naming_the_first_bad_record(state: Path) -> None:
    intact = caduceus("audit", "verify", "--state-dir", state)
    assert intact.exit_code == 0, intact.output
    assert "audit trail intact" in intact.stdout
    sql(state, "UPDATE audit_record SET body = '{\"n\": 1}' WHERE seq = 7")
    tampered = caduceus("audit", "verify", "--state-dir", state, "--json")
    assert tampered.exit_code == 1
    (acme,) = json.loads(tampered.stdout)["tenants"]
    assert (acme["tenant"], acme["first_bad_seq"], acme["problem"]) == ("acme", 7, "changed")
    said = flat(caduceus("audit", "verify", "--state-dir", state).stdout)
    assert "TAMPERED" in said and "acme at record 7" in said


def test_verify_reports_a_junk_checkpoint_row_and_an_edited_record_each_where_it_is(state: Path) -> None:
    sql(state, "INSERT INTO audit_checkpoint (tenant, seq, event_id, signed, issued_at, published) "
               "VALUES ('acme', 12, 'junk-checkpoint', '{not json', '2026-11-20 09:00:00', 1)")
    sql(state, "UPDATE audit_record SET body = x'00ff' WHERE seq = 4")
    found = caduceus("audit", "verify", "--state-dir", state, "--json")
    assert found.exit_code == 1, found.output
    findings = {(v["tenant"], v["first_bad_seq"], v["problem"]) for v in json.loads(found.stdout)["tenants"]}
    assert findings == {("acme", 12, "malformed checkpoint"), ("acme", 4, "changed")}
    said = flat(caduceus("audit", "verify", "--state-dir", state).stdout)
    assert "TAMPERED" in said and "checkpoint row 2" in said and "record 4 holds" in said


def test_verify_exits_2_when_it_cannot_do_its_job_and_says_what_to_pass(state: Path, tmp_path: Path) -> None:
    nowhere = caduceus("audit", "verify", "--state-dir", tmp_path / "no-stack-here")
    assert nowhere.exit_code == 2 and "no audit database" in flat(nowhere.stderr) and "--db" in nowhere.stderr
    unreachable = caduceus("audit", "verify", "--db", "postgresql+psycopg2://nobody@127.0.0.1:9/audit")
    assert unreachable.exit_code == 2 and "cannot reach the audit database" in flat(unreachable.stderr)
    not_a_url = caduceus("audit", "verify", "--db", "not a url")
    assert not_a_url.exit_code == 2 and "not a database URL" in flat(not_a_url.stderr)
    keyless = caduceus("audit", "verify", "--state-dir", state, "--keys-dir", tmp_path / "empty")
    assert keyless.exit_code == 2 and "audit.pub" in keyless.stderr
    no_bus = caduceus("audit", "verify", "--state-dir", state, "--bus", "--nats-url", "nats://127.0.0.1:9")
    assert no_bus.exit_code == 2 and "cannot reach NATS" in flat(no_bus.stderr)
    no_stack = caduceus("audit", "verify", "--state-dir", state, "--bus")
    assert no_stack.exit_code == 2 and "--nats-url" in no_stack.stderr


def test_checkpoints_kept_outside_catch_a_rewrite_the_database_cannot(state: Path, tmp_path: Path) -> None:
    kept = tmp_path / "kept.jsonl"
    assert caduceus("audit", "checkpoints", "--state-dir", state, "-o", kept).exit_code == 0
    store = AuditStore(f"sqlite:///{state}/audit.db")
    records = store.records(tenant="acme")
    records[2].body = '{"rewritten": true}'
    prev_hash = records[1].hash
    for record in records[2:]:  # recompute the chain from record 3 on, and drop the checkpoints
        record.prev_hash = prev_hash
        record.hash = prev_hash = link_hash(record)
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE audit_record SET body = :b, prev_hash = :p, hash = :h WHERE seq = :s"),
                         {"b": record.body, "p": record.prev_hash, "h": record.hash, "s": record.seq})
    sql(state, "DELETE FROM audit_checkpoint")
    assert caduceus("audit", "verify", "--state-dir", state).exit_code == 0
    caught = caduceus("audit", "verify", "--state-dir", state, "--checkpoints", kept, "--json")
    assert caught.exit_code == 1
    (acme,) = json.loads(caught.stdout)["tenants"]
    assert (acme["first_bad_seq"], acme["problem"]) == (3, "changed")


# --- replay -----------------------------------------------------------------------------------------------------

DEFAULT_PACK = resources.files("caduceus_embedded") / "defaults" / "policy.yaml"
CALLS = [  # (user, roles, tool, args)
    ("alice", ("member",), "terminal", {"command": "ls"}),
    ("alice", ("member",), "read_file", {"path": "notes.md"}),
    ("alice", ("member",), "write_file", {"path": "/etc/passwd", "content": "x"}),
    ("bob", ("member",), "terminal", {"command": "pwd"}),
    ("bob", ("member",), "write_file", {"path": "notes.md", "content": "hello"}),
    ("carol", ("admin",), "delegate_task", {"goal": "audit"}),
]


def pack_with(tmp_path: Path, old: str, new: str) -> Path:
    """The default pack with one rule edited (and its version bumped)."""
    pack = DEFAULT_PACK.read_text()
    assert old in pack, f"the default pack no longer contains {old!r}: update this edit"
    edited = tmp_path / "candidate.yaml"
    edited.write_text(pack.replace(old, new).replace('version: "', 'version: "candidate-'))
    return edited


def recorded_under_the_default_pack(state: Path) -> list[str]:
    """Record CALLS for acme, each decided by the default pack exactly as the policy service would."""
    engine = load_engine(Path(str(DEFAULT_PACK)))
    published, call_ids = [], []
    start = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    for n, (user, roles, tool, args) in enumerate(CALLS):
        at = start + timedelta(minutes=n)
        grant = SignedGrant.issue(IDENTITY, SessionGrant(tenant="acme", workspace="default", user=user, roles=roles,
                                                         channel="cli", session_id="s9", issued_at=at,
                                                         expires_at=at + timedelta(minutes=5)))
        digest = call_digest(tenant="acme", workspace="default", session="s9", tool=tool, args=args)
        request = ToolCallRequested(tenant="acme", grant=grant, workspace="default", session_id="s9", tool=tool,
                                    args=args, digest=digest, occurred_at=at)
        root = PurePosixPath((state / "workspaces").absolute()) / "acme" / "default"
        verdict = engine.decide(request_facts("acme", roles, tool, args, root, user=user, workspace="default"))
        decision = SignedDecision.issue(POLICY, Decision(
            tenant="acme", workspace="default", session_id="s9", call_id=request.call_id, tool=tool, digest=digest,
            verdict=verdict.verdict, reason=verdict.reason, policy_ids=verdict.policy_ids,
            pack_version=engine.version, expires_at=at + timedelta(minutes=1)))
        decided = ToolCallDecided(tenant="acme", call_id=request.call_id, workspace="default", decision=decision,
                                  occurred_at=at + timedelta(seconds=1))
        published += [Published(subjects.tool_requested("acme"), request, {}),
                      Published(subjects.tool_decided("acme"), decided, {})]
        call_ids.append(request.call_id)
    store = AuditStore(f"sqlite:///{state}/audit.db")
    record_published(store, published)
    store.close()
    return call_ids


@pytest.mark.parametrize(("old", "new", "affected", "now"), [
    ("tools: [terminal, read_file,", "tools: [read_file,", [0, 3], "deny"),
    ("tools: [write_file, patch, skill_manage]", "tools: [patch, skill_manage]", [2], "allow"),
], ids=["members-lose-terminal", "writes-rule-no-longer-covers-write_file"])
def test_replay_reports_exactly_the_calls_a_changed_rule_affects(tmp_path: Path, old: str, new: str,
                                                                  affected: list[int], now: str) -> None:
    state = tmp_path / "state"
    call_ids = recorded_under_the_default_pack(state)
    same = caduceus("audit", "replay", "--pack", DEFAULT_PACK, "--tenant", "acme", "--state-dir", state)
    assert same.exit_code == 0, same.output  # the pack that decided them changes nothing
    assert "no decision would change" in same.stdout
    changed = caduceus("audit", "replay", "--pack", pack_with(tmp_path, old, new), "--tenant", "acme",
                       "--state-dir", state, "--json")
    assert changed.exit_code == 1, changed.output
    report = json.loads(changed.stdout)
    assert report["replayed"] == len(CALLS)
    assert [c["call_id"] for c in report["changed"]] == [call_ids[n] for n in affected]
    assert {c["replayed"]["verdict"] for c in report["changed"]} == {now}
    assert all(c["recorded"]["verdict"] != now for c in report["changed"])


def test_replay_with_an_unreadable_pack_exits_2_naming_it(state: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: [")
    result = caduceus("audit", "replay", "--pack", broken, "--state-dir", state)
    assert result.exit_code == 2 and "broken.yaml" in flat(result.stderr)


# --- export, timeline, archive ----------------------------------------------------------------------------------


def test_export_writes_ocsf_and_sends_syslog_over_udp(state: Path, tmp_path: Path) -> None:
    out = tmp_path / "acme.ocsf.jsonl"
    result = caduceus("audit", "export", "--format", "ocsf", "--tenant", "acme", "--since", "2026-11-20T09:00:05Z",
                      "-o", out, "--state-dir", state)
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(events) == 10 and {e["class_uid"] for e in events} == {6003}

    received: list[bytes] = []

    class Udp(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            received.append(self.request[0])

    with socketserver.UDPServer(("127.0.0.1", 0), Udp) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        sent = caduceus("audit", "export", "--format", "syslog", "--session", "s1", "--to",
                        f"udp://127.0.0.1:{server.server_address[1]}", "--state-dir", state)
        deadline = datetime.now(UTC) + timedelta(seconds=5)
        while len(received) < 15 and datetime.now(UTC) < deadline:
            threading.Event().wait(0.05)
        server.shutdown()
    assert sent.exit_code == 0 and "exported 15 records" in flat(sent.stderr)
    assert len(received) == 15 and all(m.startswith(b"<1") and b" caduceus-audit - " in m for m in received)


def test_export_refuses_options_that_do_not_fit_the_format(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)  # otel needs an endpoint from somewhere
    assert caduceus("audit", "export", "--format", "otel", "--state-dir", state).exit_code == 2
    wrong = caduceus("audit", "export", "--format", "cef", "--to", "udp://127.0.0.1:514", "--state-dir", state)
    assert wrong.exit_code == 2 and "--to is for --format syslog" in wrong.stderr
    bad_time = caduceus("audit", "export", "--format", "jsonl", "--since", "yesterday", "--state-dir", state)
    assert bad_time.exit_code == 2 and "30m, 12h, 7d" in flat(bad_time.stderr)


def test_timeline_of_a_session_in_the_terminal_and_as_html(state: Path, tmp_path: Path) -> None:
    page = tmp_path / "incident.html"
    result = caduceus("audit", "timeline", "--session", "s1", "--html", page, "--state-dir", state)
    assert result.exit_code == 0, result.output
    shown = flat(result.stdout)
    for expected in ("asked for terminal", "asked for write_file", "writes-stay-in-workspace", "approved by carol"):
        assert expected in shown
    assert "&lt;script&gt;" in page.read_text() and "<script>" not in page.read_text()
    assert caduceus("audit", "timeline", "--session", "nope", "--state-dir", state).exit_code == 1
    assert caduceus("audit", "timeline", "--state-dir", state).exit_code == 2


def test_archive_then_verify_the_database_and_the_archive(state: Path, tmp_path: Path) -> None:
    result = caduceus("audit", "archive", "--before", "2026-11-20T10:00:00Z", "--to", tmp_path / "archive",
                      "--state-dir", state)
    assert result.exit_code == 0, result.output
    assert "archived records 1..10" in flat(result.stdout)
    (archive,) = (tmp_path / "archive").iterdir()
    verified = caduceus("audit", "verify", "--state-dir", state, "--archive", archive, "--json")
    assert verified.exit_code == 0, verified.output
    assert [(t["tenant"], t["records"], t["archived_through"]) for t in json.loads(verified.stdout)["tenants"]] == [
        ("acme", 5, 10), ("acme", 10, 0)]
    store = AuditStore(f"sqlite:///{state}/audit.db")
    store.append_batch([entry("acme", 99)])  # appends go on after the archived range
    assert store.records(tenant="acme")[-1].seq == 16
