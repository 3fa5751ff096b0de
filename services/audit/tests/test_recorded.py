"""Recorded calls read back from a real SQLite audit store, as replay and policy diff see them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from caduceus_audit import AuditStore
from caduceus_audit.domain.entries import entry_for_message
from caduceus_audit.recorded import recorded_calls
from caduceus_contracts import (
    Decision,
    Event,
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

IDENTITY, POLICY = Signer.generate("identity"), Signer.generate("policy")


def request(tool: str, args: dict, *, user: str = "alice", roles: tuple[str, ...] = ("member",),
            at: datetime | None = None) -> ToolCallRequested:
    now = utcnow()
    grant = SignedGrant.issue(IDENTITY, SessionGrant(tenant="acme", workspace="default", user=user, roles=roles,
                                                     channel="cli", session_id="s1", issued_at=now,
                                                     expires_at=now + timedelta(minutes=5)))
    digest = call_digest(tenant="acme", workspace="default", session="s1", tool=tool, args=args)
    return ToolCallRequested(tenant="acme", grant=grant, workspace="default", session_id="s1", tool=tool, args=args,
                             digest=digest, occurred_at=at or now)


def decided(req: ToolCallRequested, verdict: str) -> ToolCallDecided:
    decision = Decision(tenant="acme", workspace="default", session_id="s1", call_id=req.call_id, tool=req.tool,
                        digest=req.digest, verdict=verdict, reason=f"{verdict} by test", policy_ids=("rule-1",),
                        pack_version="v7", expires_at=utcnow() + timedelta(minutes=1))
    return ToolCallDecided(tenant="acme", call_id=req.call_id, workspace="default",
                           decision=SignedDecision.issue(POLICY, decision))


def store_events(tmp_path: Path, *events: Event) -> AuditStore:
    store = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}")
    entries = []
    for seq, event in enumerate(events, 1):
        subject = subjects.tool_requested("acme") if event.kind == "tool.requested" else subjects.tool_decided("acme")
        entries.append(entry_for_message(subject, event.model_dump_json().encode(), {}, stream_seq=seq,
                                         received_at=datetime.now(UTC)))
    store.append_batch(entries)
    return store


def test_each_request_comes_back_with_who_asked_and_the_decision_recorded(tmp_path: Path) -> None:
    terminal = request("terminal", {"command": "ls"})
    write = request("write_file", {"path": "/etc/x", "content": "y"}, user="carol", roles=("admin",))
    store = store_events(tmp_path, terminal, write, decided(write, "deny"), decided(terminal, "allow"))
    calls = {call.tool: call for call in recorded_calls(store)}
    assert calls["terminal"].verdict == "allow" and calls["terminal"].args == {"command": "ls"}
    assert calls["write_file"].verdict == "deny"
    assert (calls["write_file"].user, calls["write_file"].roles) == ("carol", ("admin",))
    assert calls["write_file"].policy_ids == ("rule-1",) and calls["write_file"].pack_version == "v7"


def test_an_undecided_request_has_no_verdict_and_since_filters_older_calls(tmp_path: Path) -> None:
    old = request("terminal", {"command": "old"}, at=utcnow() - timedelta(days=2))
    new = request("terminal", {"command": "new"})
    store = store_events(tmp_path, old, new)
    calls = list(recorded_calls(store, since=utcnow() - timedelta(days=1)))
    assert [c.args["command"] for c in calls] == ["new"]
    assert calls[0].verdict is None


def test_secrets_in_recorded_arguments_stay_redacted(tmp_path: Path) -> None:
    secret = "AKIA" + "Q" * 16
    store = store_events(tmp_path, request("terminal", {"command": f"export AWS_ACCESS_KEY_ID={secret}"}))
    (call,) = recorded_calls(store)
    assert secret not in json.dumps(call.args)


def test_an_approved_call_keeps_what_policy_decided_beside_the_approval(tmp_path: Path) -> None:
    from caduceus_audit.testing import governed_session, record_published

    store = AuditStore(f"sqlite:///{tmp_path / 'story.db'}")
    record_published(store, governed_session())
    patch = next(call for call in recorded_calls(store) if call.tool == "patch")
    assert (patch.verdict, patch.reason) == ("allow", "approved by carol")
    assert (patch.policy_verdict, patch.policy_ids, patch.pack_version) == ("approve", ("patches-need-approval",), "v7")
