"""parse_event: every contract event round-trips; anything else is refused with a message saying why."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from caduceus_contracts import (
    EVENT_KINDS,
    ApprovalAnswered,
    ApprovalEscalated,
    ApprovalRefused,
    ApprovalReminded,
    ApprovalRequested,
    ApprovalResolved,
    ApprovalView,
    ApprovalVote,
    ApprovalVoted,
    ApprovalVouched,
    ApprovalVouchRequested,
    AuditCheckpointed,
    ChainCheckpoint,
    ChatMessageIn,
    ChatNotice,
    ChatReply,
    ContractError,
    DataClassSpec,
    Decision,
    ErrorEvent,
    GrantRequested,
    IdentityChanged,
    McpDefinitionChanged,
    McpPinChanged,
    McpServerChanged,
    ModelCallCompleted,
    ModelCallDecided,
    ModelCallRequested,
    ModelDecision,
    ModelUsage,
    PolicyShadowDisagreed,
    RiskyFact,
    SessionGrant,
    SignedCheckpoint,
    SignedDecision,
    SignedGrant,
    SignedModelDecision,
    SignedVouch,
    Signer,
    ToolCallCompleted,
    ToolCallDecided,
    ToolCallDispatched,
    ToolCallRequested,
    TurnAssigned,
    TurnRequested,
    TurnStopped,
    Vouch,
    WorkerLifecycle,
    call_digest,
    decision_ttl,
    parse_event,
    subjects,
    utcnow,
)
from caduceus_contracts.models import MAX_EVENT_BYTES

IDENTITY = Signer.generate("identity")
POLICY = Signer.generate("policy")
AUDIT = Signer.generate("audit")
ARGS = {"command": "ls", "nested": {"n": [1, 2.5, None, "ü"]}}
DIGEST = call_digest(tenant="acme", workspace="default", session="s-1", tool="terminal", args=ARGS)
NOW = utcnow()
GRANT = SignedGrant.issue(IDENTITY, SessionGrant(
    tenant="acme", workspace="default", user="alice", roles=("member",), channel="cli", session_id="s-1",
    issued_at=NOW, expires_at=NOW + timedelta(minutes=5)))
DECISION = SignedDecision.issue(POLICY, Decision(
    tenant="acme", workspace="default", session_id="s-1", call_id="c-1", tool="terminal", digest=DIGEST,
    verdict="allow", reason="read-only", policy_ids=("p1",), expires_at=decision_ttl()))

SAMPLES = [
    ChatMessageIn(tenant="acme", session_id="s-1", token="eyJ...", text="list the files"),
    TurnRequested(tenant="acme", message_id="m-1", grant=GRANT, text="list the files"),
    TurnAssigned(tenant="acme", message_id="m-1", grant=GRANT, text="list the files", worker_id="w-1"),
    ToolCallRequested(tenant="acme", grant=GRANT, workspace="default", session_id="s-1", tool="terminal",
                      args=ARGS, digest=DIGEST),
    ToolCallDecided(tenant="acme", call_id="c-1", workspace="default", decision=DECISION),
    ToolCallDispatched(tenant="acme", call_id="c-1", workspace="default", session_id="s-1", tool="terminal",
                       args=ARGS, decision=DECISION),
    ToolCallCompleted(tenant="acme", call_id="c-1", workspace="default", session_id="s-1", tool="terminal",
                      status="ok", result="a\nb"),
    ChatReply(tenant="acme", message_id="m-1", session_id="s-1", text="done"),
    WorkerLifecycle(tenant="acme", workspace="default", worker_id="w-1", role="planner", state="started"),
    ErrorEvent(tenant="acme", service="policy", subject="cad.v1.tool.requested.acme", reason="bad digest"),
    ModelUsage(tenant="acme", workspace="default", session_id="s-1", user="alice", model="m", prompt_tokens=10,
               completion_tokens=5, cost_usd=0.001),
    PolicyShadowDisagreed(tenant="acme", call_id="c-1", workspace="default", tool="terminal", live_version="v1",
                          live_verdict="allow", shadow_version="v2", shadow_verdict="deny", shadow_policy_ids=("x",)),
    CHECKPOINTED := AuditCheckpointed.of(SignedCheckpoint.issue(AUDIT, ChainCheckpoint(
        tenant="acme", seq=3, hash="ab" * 32, prev_seq=1, fingerprints="0123abcd" "ffff0000"))),
]
VIEW = ApprovalView(
    workflow_id="approval-acme-c-1", tenant="acme", call_id="c-1", workspace="default", session_id="s-1",
    tool="terminal", args=ARGS, digest=DIGEST, requester="alice", reason="deletes need an admin",
    facts=(RiskyFact(name="destructive", value="rm -rf build", argument="command"),), approvers=("carol",), quorum=1,
    votes=(ApprovalVote(approver="carol", answer="approve", at=NOW),), opened_at=NOW, expires_at=NOW)
SAMPLES += [
    ApprovalRequested(tenant="acme", call_id="c-1", approval=VIEW),
    ApprovalVoted(tenant="acme", call_id="c-1", approval=VIEW),
    ApprovalEscalated(tenant="acme", call_id="c-1", approval=VIEW),
    ApprovalReminded(tenant="acme", call_id="c-1", approval=VIEW, remind=("carol",)),
    ApprovalResolved(tenant="acme", call_id="c-1", approval=VIEW),
    ApprovalAnswered(tenant="acme", call_id="c-1", digest=DIGEST, answer="approve", token="eyJ..."),
    ApprovalRefused(tenant="acme", call_id="c-1", approver="bob", answer="approve", channel="web",
                    reason="bob is not one of the approvers"),
    ChatNotice(tenant="acme", session_id="s-1", call_id="c-1", text="waiting for approval from admin"),
    IdentityChanged(tenant="acme", action="service-account.created", actor="carol", subject="slack-bot",
                    detail="for slack"),
    ApprovalVouchRequested(tenant="acme", call_id="c-1", digest=DIGEST, answer="approve", token="cad_sa_...",
                           channel="slack:T1:U1", platform="slack", platform_user="T1:U1"),
    ApprovalVouched(tenant="acme", call_id="c-1", vouch=SignedVouch.issue(IDENTITY, Vouch(
        tenant="acme", user="carol", platform="slack", platform_user="T1:U1", vouched_by="slack-bot", call_id="c-1",
        digest=DIGEST, answer="approve", channel="slack:T1:U1", issued_at=NOW, expires_at=NOW + timedelta(minutes=1)))),
    GrantRequested(tenant="acme", session_id="mcp-alice", token="eyJ..."),
    McpServerChanged(tenant="acme", action="added", actor="operator", server="files", scope="workspaces:default",
                     transport="stdio", target="python -m files_server", credentials=("files-token",)),
    McpPinChanged(tenant="acme", action="pinned", actor="carol", server="files", tool="read", workspace="default",
                  digest="ab" * 32),
    McpDefinitionChanged(tenant="acme", server="files", tool="read", pinned_digest="ab" * 32,
                         served_digest="cd" * 32, diff="-  \"description\": \"Read\"\n+  \"description\": \"x\""),
]
MODEL_DECISION = ModelDecision(tenant="acme", workspace="default", session_id="s-1", call_id="mc-1",
                               prompt_digest=DIGEST, verdict="allow", reason="default route", upstream="default",
                               redact_prompt=(DataClassSpec(name="secret"),), expires_at=decision_ttl())
SAMPLES += [
    ModelCallRequested(tenant="acme", call_id="mc-1", grant=GRANT, workspace="default", session_id="s-1",
                       prompt="hello", prompt_digest=DIGEST, estimated_tokens=2),
    ModelCallDecided(tenant="acme", call_id="mc-1", workspace="default",
                     decision=SignedModelDecision.issue(POLICY, MODEL_DECISION)),
    ModelCallCompleted(tenant="acme", call_id="mc-1", workspace="default", session_id="s-1", user="alice",
                       upstream="default", status="ok"),
]
SAMPLES += [
    TurnStopped(tenant="acme", turn_id="g-1", workspace="default", session_id="s-1", user="alice", limit="tool_calls",
                guardrail="acme-turns", reason="this turn was stopped: 12 tool calls is the limit per turn for acme",
                call_id="c-13", tool="terminal", tool_calls=12, model_calls=13, tokens=900),
]


def test_a_session_grant_round_trips_as_an_api_key_and_nothing_else_passes_as_one():
    assert SignedGrant.from_api_key(GRANT.as_api_key()) == GRANT
    for key in ("sk-abc", "cadgrant_", "cadgrant_!!!", "cadgrant_" + "A" * 100):
        with pytest.raises(ContractError):
            SignedGrant.from_api_key(key)


def body(event, **changes) -> bytes:
    data = json.loads(event.model_dump_json())
    data.update(changes)
    return json.dumps(data).encode()


def test_samples_cover_every_event_kind():
    assert {event.kind for event in SAMPLES} == set(EVENT_KINDS)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.kind)
def test_every_event_kind_round_trips(event):
    parsed = parse_event(event.model_dump_json().encode(), expect=type(event))
    assert parsed == event
    assert type(parsed) is type(event)


def test_signatures_inside_events_still_verify_after_the_round_trip():
    from caduceus_contracts import Keyring

    ring = Keyring()
    ring.trust("identity", IDENTITY.private_key.public_key())
    ring.trust("policy", POLICY.private_key.public_key())
    dispatched = parse_event(SAMPLES[5].model_dump_json())
    requested = parse_event(SAMPLES[3].model_dump_json())
    assert dispatched.decision.verify(ring, issuers={"policy"}) == dispatched.decision.decision
    assert requested.grant.verify(ring).user == "alice"
    assert requested.computed_digest() == requested.digest


def test_unknown_kind_is_refused():
    with pytest.raises(ContractError, match="'tool.executed'"):
        parse_event(body(SAMPLES[0], kind="tool.executed"))


def test_missing_kind_is_refused():
    data = json.loads(SAMPLES[0].model_dump_json())
    del data["kind"]
    with pytest.raises(ContractError, match="malformed event"):
        parse_event(json.dumps(data))


def test_unknown_schema_version_is_refused():
    with pytest.raises(ContractError, match=r"schema_version: Input should be 1"):
        parse_event(body(SAMPLES[7], schema_version=2))


def test_extra_fields_are_refused():
    with pytest.raises(ContractError, match=r"chat\.reply\.approved_by: Extra inputs are not permitted"):
        parse_event(body(SAMPLES[7], approved_by="carol"))


def test_extra_field_inside_a_signed_decision_is_refused():
    data = json.loads(SAMPLES[4].model_dump_json())
    data["decision"]["decision"]["verdict_override"] = "allow"
    with pytest.raises(ContractError, match="verdict_override"):
        parse_event(json.dumps(data))


def test_event_for_another_tenant_than_its_subject_is_refused():
    with pytest.raises(ContractError, match="tenant 'acme' published on 'cad.v1.chat.in.globex'"):
        parse_event(SAMPLES[0].model_dump_json(), subject=subjects.chat_in("globex"))


def test_event_on_its_own_tenant_subject_is_accepted():
    assert parse_event(SAMPLES[0].model_dump_json(), subject=subjects.chat_in("acme")) == SAMPLES[0]


def test_error_event_on_its_tenant_error_subject_is_accepted():
    error = SAMPLES[9]
    assert parse_event(error.model_dump_json(), subject=subjects.error("acme", "policy")) == error


def test_error_event_for_an_unattributable_message_is_accepted_under_the_system_tenant():
    error = ErrorEvent(tenant=subjects.SYSTEM_TENANT, service="policy", subject="cad.v1.chat.in.BAD", reason="x")
    assert parse_event(error.model_dump_json(), subject=subjects.error("BAD", "policy")) == error


def test_only_error_events_may_speak_for_the_system_tenant():
    with pytest.raises(ContractError, match="tenant"):
        parse_event(body(SAMPLES[0], tenant=subjects.SYSTEM_TENANT))


def test_event_of_another_kind_than_expected_is_refused():
    with pytest.raises(ContractError, match="expected tool.requested event, got chat.reply"):
        parse_event(SAMPLES[7].model_dump_json(), expect=ToolCallRequested)


def test_oversized_body_is_refused_before_parsing():
    huge = body(SAMPLES[0], text="x" * MAX_EVENT_BYTES)
    with pytest.raises(ContractError, match=f"exceeds the {MAX_EVENT_BYTES}-byte limit"):
        parse_event(huge)


@pytest.mark.parametrize("raw", [b'{"kind": "chat.reply", "text": "\xff\xfe"}', b"\xc3\x28", b"\xed\xa0\x80"],
                         ids=["invalid-byte", "bad-continuation", "encoded-surrogate"])
def test_invalid_utf8_is_refused(raw):
    with pytest.raises(ContractError, match="Invalid JSON"):
        parse_event(raw)


@pytest.mark.parametrize("raw", [b"", b"{", b"null", b"[]", b'"chat.reply"', b"{not json}"])
def test_malformed_json_is_refused(raw):
    with pytest.raises(ContractError, match="malformed event"):
        parse_event(raw)


def test_invalid_tenant_in_the_body_is_refused():
    with pytest.raises(ContractError, match="tenant"):
        parse_event(body(SAMPLES[0], tenant="acme.>"))


def test_tool_request_with_a_malformed_digest_is_refused():
    with pytest.raises(ContractError, match="digest"):
        parse_event(body(SAMPLES[3], digest="not-a-digest"))


def test_a_checkpoint_verifies_only_with_the_audit_key_and_names_each_record_fingerprint():
    from caduceus_contracts import Keyring, SignatureError

    event = parse_event(CHECKPOINTED.model_dump_json(), subject=subjects.audit_checkpoint("acme"))
    ring = Keyring()
    ring.trust("audit", AUDIT.private_key.public_key())
    checkpoint = event.checkpoint.verify(ring)
    assert [checkpoint.fingerprint(seq) for seq in (1, 2, 3, 4)] == [None, "0123abcd", "ffff0000", None]
    forged = SignedCheckpoint.issue(POLICY, checkpoint.model_copy(update={"hash": "cd" * 32}))
    ring.trust("policy", POLICY.private_key.public_key())
    with pytest.raises(SignatureError, match="may not sign"):
        forged.verify(ring)


@pytest.mark.parametrize(("prev_seq", "fingerprints"), [(3, ""), (1, "0123abcd"), (0, "0123abcd" * 4)])
def test_a_checkpoint_whose_fingerprints_do_not_cover_its_range_is_refused(prev_seq, fingerprints):
    data = json.loads(CHECKPOINTED.model_dump_json())
    data["checkpoint"]["checkpoint"].update(prev_seq=prev_seq, fingerprints=fingerprints)
    with pytest.raises(ContractError, match="malformed event"):
        parse_event(json.dumps(data))


@pytest.mark.parametrize("call", [sample for sample in SAMPLES if isinstance(sample, ToolCallRequested | ToolCallDispatched)])
def test_a_completion_names_the_call_it_completes(call) -> None:
    completed = ToolCallCompleted.of(call, "ok", result="a\nb", executed_by="w-1")
    assert (completed.tenant, completed.call_id, completed.workspace, completed.session_id, completed.tool) == (
        call.tenant, call.call_id, call.workspace, call.session_id, call.tool)
    assert (completed.status, completed.result, completed.reason, completed.executed_by) == ("ok", "a\nb", "", "w-1")
    assert ToolCallCompleted.of(call, "denied", reason="no").executed_by is None
