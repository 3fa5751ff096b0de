"""Deciding without a bus: keys that appear later, and an engine that fails."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from caduceus_contracts import (
    SessionGrant,
    SignedGrant,
    ToolCallRequested,
    call_digest,
    ensure_signer,
    load_keyring,
    utcnow,
)
from caduceus_policy.domain import Verdict
from caduceus_policy.engine import engine_from_files
from caduceus_policy.facts import RequestFacts
from caduceus_policy.handlers import Decider, workspace_root
from caduceus_policy.keys import TrustedKeys


class ExplodingEngine:
    """An engine with a bug, as a future policy pack might have."""

    version = "broken.1"

    def decide(self, request: RequestFacts) -> Verdict:
        raise KeyError("principal")


def a_request(keys_dir: Path, command: str = "ls") -> ToolCallRequested:
    now = utcnow()
    grant = SessionGrant(tenant="acme", workspace="default", user="carol", roles=("admin",), channel="cli",
                         session_id="s1", issued_at=now, expires_at=now + timedelta(minutes=5))
    signed = SignedGrant.issue(ensure_signer(keys_dir, "identity"), grant)
    args = {"command": command}
    digest = call_digest(tenant="acme", workspace="default", session="s1", tool="terminal", args=args)
    return ToolCallRequested(tenant="acme", grant=signed, workspace="default", session_id="s1", tool="terminal",
                             args=args, digest=digest)


def test_a_key_created_after_start_is_trusted_without_a_restart(tmp_path: Path) -> None:
    keys = TrustedKeys(tmp_path)
    assert keys.keyring.keys == {}
    request = a_request(tmp_path)
    assert keys.verify_grant(request.grant).user == "carol"


def test_an_engine_failure_is_a_signed_deny_not_a_crash(tmp_path: Path) -> None:
    decider = Decider(engine=ExplodingEngine(), keys=TrustedKeys(tmp_path),
                      signer=ensure_signer(tmp_path, "policy"), workspaces_dir=tmp_path / "workspaces")
    decided = decider.decide(a_request(tmp_path))
    decision = decided.decision.decision
    assert decision.verdict == "deny"
    assert decision.reason.startswith("policy evaluation failed: KeyError")
    assert decision.pack_version == "broken.1"
    assert decided.decision.verify(load_keyring(tmp_path), issuers={"policy"}) == decided.decision.decision


PACK = {"policy.yaml": """
version: "v"
tenants:
  acme:
    approvals: {approvers: sre, quorum: 2, timeout: 10m}
    rules:
      - {id: admins-run-commands, effect: allow, roles: [admin], tools: [terminal]}
      - {id: rm-needs-two, effect: approve, tools: [terminal], when: {destructive: true}}
"""}


def test_the_decision_ttl_setting_sets_the_expiry(tmp_path: Path) -> None:
    decider = Decider(engine=engine_from_files(PACK), keys=TrustedKeys(tmp_path),
                      signer=ensure_signer(tmp_path, "policy"), workspaces_dir=tmp_path, decision_ttl_s=5)
    decision = decider.decide(a_request(tmp_path)).decision.decision
    assert decision.verdict == "allow"
    assert timedelta(seconds=4) < decision.expires_at - decision.issued_at <= timedelta(seconds=5)


def test_an_approve_decision_names_the_approvers_quorum_and_window(tmp_path: Path) -> None:
    decider = Decider(engine=engine_from_files(PACK), keys=TrustedKeys(tmp_path),
                      signer=ensure_signer(tmp_path, "policy"), workspaces_dir=tmp_path)
    decision = decider.decide(a_request(tmp_path, "rm -rf build")).decision.decision
    assert (decision.verdict, decision.approver_group, decision.quorum) == ("approve", "sre", 2)
    assert decision.approval is not None
    assert (decision.approval.groups, decision.approval.quorum, decision.approval.timeout_s) == (("sre",), 2, 600)
    assert decision.approval.self_approval is False
    # What the approver sees highlighted: the destructive part of the command.
    assert [(f.name, f.argument) for f in decision.facts] == [("destructive", "command")]
    assert "rm -rf build" in str(decision.facts[0].value)
    assert decision.policy_ids == ("rm-needs-two", "admins-run-commands")
    assert decision.expires_at - decision.issued_at == timedelta(minutes=10)
    assert decision.reason.startswith("needs approval by sre (quorum 2, within 10m)")


def test_the_workspace_root_is_tenant_then_workspace_under_the_workspaces_dir(tmp_path: Path) -> None:
    assert str(workspace_root(tmp_path, "acme", "default")) == f"{tmp_path}/acme/default"
