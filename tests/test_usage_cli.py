"""`caduceus usage` reads model tokens, cost, calls and refusals from the audit trail, grouped as asked."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from caduceus.cli import app
from caduceus_audit import AuditStore
from caduceus_audit.testing import Published, record_published
from caduceus_contracts import (
    ModelCallDecided,
    ModelCallRequested,
    ModelDecision,
    ModelUsage,
    SessionGrant,
    SignedGrant,
    SignedModelDecision,
    Signer,
    subjects,
)

IDENTITY, POLICY = Signer.generate("identity"), Signer.generate("policy")
DIGEST = "cd" * 32


def used(tenant: str, user: str, model: str, prompt: int, completion: int, cost: float, at: datetime) -> Published:
    event = ModelUsage(tenant=tenant, workspace="default", session_id="s1", user=user, model=model,
                       prompt_tokens=prompt, completion_tokens=completion, cost_usd=cost, occurred_at=at)
    return Published(subjects.model_usage(tenant), event, {"Nats-Msg-Id": event.event_id})


def refused(tenant: str, user: str, call_id: str, at: datetime) -> list[Published]:
    grant = SignedGrant.issue(IDENTITY, SessionGrant(tenant=tenant, workspace="default", user=user, roles=("member",),
                                                     channel="cli", session_id="s1", issued_at=at,
                                                     expires_at=at + timedelta(hours=1)))
    asked = ModelCallRequested(tenant=tenant, call_id=call_id, grant=grant, workspace="default", session_id="s1",
                               model="scripted", prompt="hi", prompt_digest=DIGEST, occurred_at=at)
    decided = ModelCallDecided(tenant=tenant, call_id=call_id, workspace="default", occurred_at=at,
                               decision=SignedModelDecision.issue(POLICY, ModelDecision(
                                   tenant=tenant, workspace="default", session_id="s1", call_id=call_id,
                                   prompt_digest=DIGEST, verdict="deny", reason="over budget",
                                   expires_at=at + timedelta(minutes=1))))
    return [Published(subjects.model_requested(tenant), asked, {"Nats-Msg-Id": asked.event_id}),
            Published(subjects.model_decided(tenant), decided, {"Nats-Msg-Id": decided.event_id})]


@pytest.fixture()
def state(tmp_path: Path) -> Path:
    today = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    yesterday = today - timedelta(days=1)
    store = AuditStore(f"sqlite:///{tmp_path}/audit.db")
    record_published(store, [
        used("acme", "alice", "big-1", 100, 20, 0.01, yesterday),
        used("acme", "alice", "big-1", 50, 10, 0.005, today),
        used("acme", "bob", "small-1", 30, 5, 0.0, today),
        *refused("acme", "alice", "m-refused", today),
        used("globex", "gina", "big-1", 7, 3, 0.0, today),
        used("acme", "alice", "big-1", 999, 1, 9.0, today - timedelta(days=60)),  # outside the last 30 days
    ])
    store.close()
    return tmp_path


def usage(state: Path, *args: str):
    return CliRunner().invoke(app, ["usage", "--state-dir", str(state), *args], catch_exceptions=False)


def test_usage_by_person_counts_real_tokens_cost_calls_and_refusals(state: Path) -> None:
    result = usage(state, "--by", "person", "--tenant", "acme", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["person"]: row for row in json.loads(result.stdout)["rows"]}
    assert set(rows) == {"alice", "bob"}
    assert (rows["alice"]["tokens"], rows["alice"]["calls"], rows["alice"]["refusals"]) == (180, 2, 1)
    assert rows["alice"]["cost_usd"] == pytest.approx(0.015)
    assert (rows["bob"]["tokens"], rows["bob"]["refusals"]) == (35, 0)


def test_usage_by_tenant_model_and_day(state: Path) -> None:
    tenants = {r["tenant"]: r for r in json.loads(usage(state, "--json").stdout)["rows"]}
    assert tenants["acme"]["calls"] == 3 and tenants["globex"]["tokens"] == 10
    days = json.loads(usage(state, "--by", "day,model", "--tenant", "acme", "--json").stdout)["rows"]
    assert [(r["model"], r["tokens"]) for r in days if r["model"] == "big-1"] == [("big-1", 120), ("big-1", 60)]
    assert days[0]["day"] < days[-1]["day"]


def test_usage_as_csv_has_a_header_and_one_row_per_group(state: Path) -> None:
    result = usage(state, "--by", "tenant,person", "--csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["tenant"], r["person"], r["tokens"]) for r in rows] == [
        ("acme", "alice", "180"), ("acme", "bob", "35"), ("globex", "gina", "10")]


def test_usage_text_is_a_table_and_mistakes_exit_2(state: Path, tmp_path: Path) -> None:
    text = usage(state, "--by", "person")
    assert text.exit_code == 0 and "alice" in text.stdout and "refusals" in text.stdout
    for args, says in ((["--by", "colour"], "group by any of"), (["--since", "soon"], "give a duration"),
                       (["--json", "--csv"], "choose one")):
        result = usage(state, *args)
        assert result.exit_code == 2 and says in result.stderr, result.output
    missing = CliRunner().invoke(app, ["usage", "--state-dir", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no audit store" in missing.stderr


def allowed(tenant: str, user: str, call_id: str, prompt: str, upstream: str, at: datetime) -> list[Published]:
    grant = SignedGrant.issue(IDENTITY, SessionGrant(tenant=tenant, workspace="default", user=user, roles=("member",),
                                                     channel="cli", session_id="s1", issued_at=at,
                                                     expires_at=at + timedelta(hours=1)))
    asked = ModelCallRequested(tenant=tenant, call_id=call_id, grant=grant, workspace="default", session_id="s1",
                               model="scripted", prompt=prompt, prompt_digest=DIGEST, occurred_at=at)
    decided = ModelCallDecided(tenant=tenant, call_id=call_id, workspace="default", occurred_at=at,
                               decision=SignedModelDecision.issue(POLICY, ModelDecision(
                                   tenant=tenant, workspace="default", session_id="s1", call_id=call_id,
                                   prompt_digest=DIGEST, verdict="allow", reason="default route", upstream=upstream,
                                   policy_ids=("model-route:default",), expires_at=at + timedelta(minutes=1))))
    return [Published(subjects.model_requested(tenant), asked, {"Nats-Msg-Id": asked.event_id}),
            Published(subjects.model_decided(tenant), decided, {"Nats-Msg-Id": decided.event_id})]


def test_audit_replay_finds_model_calls_a_candidate_pack_would_route_or_refuse_otherwise(tmp_path: Path) -> None:
    at = datetime.now(UTC) - timedelta(minutes=5)
    store = AuditStore(f"sqlite:///{tmp_path}/audit.db")
    record_published(store, [*allowed("acme", "alice", "m-plan", "plan the week", "outside", at),
                             *allowed("acme", "alice", "m-memo", "the TOP SECRET memo", "outside", at),
                             *allowed("acme", "alice", "m-cust", "about CUST-123456", "outside", at)])
    store.close()
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(
        'version: "c1"\ntenants:\n  acme:\n'
        "    classifiers: {classified: {words: [top secret]}, customer_data: {patterns: ['CUST-[0-9]{6}']}}\n"
        "    models:\n      default: outside\n"
        "      routes: [{id: classified-stays-home, upstream: self-hosted, data_classes: [classified]}]\n"
        "      prompt_rules: {customer_data: deny}\n")
    result = CliRunner().invoke(app, ["audit", "replay", "--pack", str(candidate), "--state-dir", str(tmp_path),
                                      "--json"], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    changed = {c["call_id"]: c for c in json.loads(result.stdout)["changed"]}
    assert set(changed) == {"m-memo", "m-cust"}  # the plain prompt still goes where it went
    assert changed["m-memo"]["upstream"] == {"recorded": "outside", "replayed": "self-hosted"}
    assert changed["m-cust"]["replayed"]["verdict"] == "deny" and changed["m-cust"]["tool"] == "model"
