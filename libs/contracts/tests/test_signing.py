"""Signed decisions and grants: only the right issuer's key, over the exact content, verifies."""

from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path

import pytest

from caduceus_contracts import (
    Decision,
    GrantExpired,
    Keyring,
    ReloadingKeyring,
    SessionGrant,
    SignatureError,
    SignedDecision,
    SignedGrant,
    Signer,
    call_digest,
    decision_ttl,
    ensure_signer,
    load_keyring,
    utcnow,
)

POLICY = Signer.generate("policy")
APPROVAL = Signer.generate("approval")
IDENTITY = Signer.generate("identity")


@pytest.fixture()
def keyring() -> Keyring:
    ring = Keyring()
    for signer in (POLICY, APPROVAL, IDENTITY):
        ring.trust(signer.issuer, signer.private_key.public_key())
    return ring


def a_decision(**overrides) -> Decision:
    fields = dict(
        tenant="acme", workspace="default", session_id="s-1", call_id="c-1", tool="terminal",
        digest=call_digest(tenant="acme", workspace="default", session="s-1", tool="terminal", args={"command": "ls"}),
        verdict="allow", reason="read-only command", expires_at=decision_ttl(60),
    )
    return Decision(**{**fields, **overrides})


def a_grant(**overrides) -> SessionGrant:
    now = utcnow()
    fields = dict(tenant="acme", workspace="default", user="alice", roles=("member",), channel="cli",
                  session_id="s-1", issued_at=now, expires_at=now + timedelta(minutes=5))
    return SessionGrant(**{**fields, **overrides})


def test_decision_signed_by_policy_verifies(keyring):
    assert SignedDecision.issue(POLICY, a_decision()).verify(keyring) == "policy"


def test_decision_signed_by_approval_verifies(keyring):
    assert SignedDecision.issue(APPROVAL, a_decision(verdict="allow", reason="approved by carol")).verify(keyring) == "approval"


@pytest.mark.parametrize(
    "tamper",
    [{"verdict": "approve"}, {"tenant": "globex"}, {"digest": "0" * 64}, {"reason": "allowed"},
     {"expires_at": decision_ttl(3600)}],
    ids=["verdict", "tenant", "digest", "reason", "expiry"],
)
def test_modified_decision_fails_verification(keyring, tamper):
    signed = SignedDecision.issue(POLICY, a_decision(verdict="deny", reason="denied"))
    forged = signed.model_copy(update={"decision": signed.decision.model_copy(update=tamper)})
    with pytest.raises(SignatureError, match="does not match"):
        forged.verify(keyring)


def test_identity_key_cannot_sign_a_decision(keyring):
    signed = SignedDecision.issue(IDENTITY, a_decision())
    with pytest.raises(SignatureError, match="'identity', which may not sign this"):
        signed.verify(keyring)


def test_policy_key_cannot_sign_a_session_grant(keyring):
    signed = SignedGrant.issue(POLICY, a_grant())
    with pytest.raises(SignatureError, match="may not sign"):
        signed.verified(keyring)


def test_decision_from_an_unknown_key_fails(keyring):
    rogue = Signer.generate("policy")  # calls itself policy, but nobody trusts its key
    with pytest.raises(SignatureError, match="unknown signing key"):
        SignedDecision.issue(rogue, a_decision()).verify(keyring)


def test_another_key_claiming_the_policy_key_id_fails(keyring):
    rogue = Signer.generate("policy")
    decision = a_decision()
    forged = SignedDecision(decision=decision, key_id=POLICY.key_id, signature=rogue.sign(decision.model_dump(mode="json")))
    with pytest.raises(SignatureError, match="does not match"):
        forged.verify(keyring)


@pytest.mark.parametrize(
    "signature",
    ["", "not base64 !!", "A" * 86, base64.urlsafe_b64encode(b"\0" * 64).decode().rstrip("="), "QUJD"],
    ids=["empty", "not-base64", "zeros-text", "zero-bytes", "too-short"],
)
def test_garbage_signature_fails(keyring, signature):
    forged = SignedDecision(decision=a_decision(), key_id=POLICY.key_id, signature=signature)
    with pytest.raises(SignatureError):
        forged.verify(keyring)


def test_signature_survives_the_wire(keyring):
    signed = SignedDecision.issue(POLICY, a_decision())
    received = SignedDecision.model_validate_json(signed.model_dump_json())
    assert received.verify(keyring) == "policy"


def test_grant_signed_by_identity_is_returned_until_it_expires(keyring):
    grant = a_grant()
    signed = SignedGrant.issue(IDENTITY, grant)
    assert signed.verified(keyring) == grant
    with pytest.raises(GrantExpired, match="expired"):
        signed.verified(keyring, now=grant.expires_at)


def test_grant_with_elevated_roles_fails(keyring):
    signed = SignedGrant.issue(IDENTITY, a_grant())
    forged = signed.model_copy(update={"grant": signed.grant.model_copy(update={"roles": ("admin",)})})
    with pytest.raises(SignatureError):
        forged.verified(keyring)


def test_keys_written_by_ensure_signer_are_trusted_by_load_keyring(tmp_path: Path):
    signer = ensure_signer(tmp_path, "policy")
    assert ensure_signer(tmp_path, "policy").key_id == signer.key_id  # loaded, not regenerated
    assert (tmp_path / "policy.key").stat().st_mode & 0o077 == 0
    ring = load_keyring(tmp_path)
    assert SignedDecision.issue(signer, a_decision()).verify(ring) == "policy"


def test_keyring_from_an_empty_directory_trusts_nothing(tmp_path: Path):
    ring = load_keyring(tmp_path / "missing")
    with pytest.raises(SignatureError, match="unknown signing key"):
        SignedDecision.issue(POLICY, a_decision()).verify(ring)


def test_a_reloading_keyring_trusts_a_key_written_after_it_was_made(tmp_path: Path):
    ring = ReloadingKeyring(tmp_path)
    signer = ensure_signer(tmp_path, "policy")  # policy started after the verifier
    assert SignedDecision.issue(signer, a_decision()).verify(ring) == "policy"
    assert ring.key(signer.key_id) == ring.keys[signer.key_id]


def test_a_reloading_keyring_still_binds_each_key_to_its_issuer(tmp_path: Path):
    ring = ReloadingKeyring(tmp_path)
    grant_signer = ensure_signer(tmp_path, "identity")
    with pytest.raises(SignatureError, match="may not sign"):
        SignedDecision.issue(grant_signer, a_decision()).verify(ring)
    with pytest.raises(SignatureError, match="unknown signing key"):
        SignedDecision.issue(POLICY, a_decision()).verify(ring)
