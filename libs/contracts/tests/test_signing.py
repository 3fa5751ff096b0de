"""Signed decisions and grants: only the right issuer's key, over the exact content, verifies."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from caduceus_contracts import (
    Decision,
    GrantExpired,
    Keyring,
    ReloadingKeyring,
    SessionGrant,
    SignatureError,
    SignedCheckpoint,
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
    decision = a_decision()
    assert SignedDecision.issue(POLICY, decision).verify(keyring, issuers={"policy"}) == decision


def test_decision_signed_by_approval_verifies(keyring):
    decision = a_decision(verdict="allow", reason="approved by carol")
    assert SignedDecision.issue(APPROVAL, decision).verify(keyring, issuers={"approval"}) == decision


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
        signed.verify(keyring)


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
    assert received.verify(keyring, issuers={"policy"}) == signed.decision


def test_grant_signed_by_identity_is_returned_until_it_expires(keyring):
    grant = a_grant()
    signed = SignedGrant.issue(IDENTITY, grant)
    assert signed.verify(keyring) == grant
    with pytest.raises(GrantExpired, match="expired"):
        signed.verify(keyring, now=grant.expires_at)


def test_grant_with_elevated_roles_fails(keyring):
    signed = SignedGrant.issue(IDENTITY, a_grant())
    forged = signed.model_copy(update={"grant": signed.grant.model_copy(update={"roles": ("admin",)})})
    with pytest.raises(SignatureError):
        forged.verify(keyring)


def test_keys_written_by_ensure_signer_are_trusted_by_load_keyring(tmp_path: Path):
    signer = ensure_signer(tmp_path, "policy")
    assert ensure_signer(tmp_path, "policy").key_id == signer.key_id  # loaded, not regenerated
    assert (tmp_path / "policy.key").stat().st_mode & 0o077 == 0
    ring = load_keyring(tmp_path)
    decision = a_decision()
    assert SignedDecision.issue(signer, decision).verify(ring, issuers={"policy"}) == decision


def test_keyring_from_an_empty_directory_trusts_nothing(tmp_path: Path):
    ring = load_keyring(tmp_path / "missing")
    with pytest.raises(SignatureError, match="unknown signing key"):
        SignedDecision.issue(POLICY, a_decision()).verify(ring)


def test_a_reloading_keyring_trusts_a_key_written_after_it_was_made(tmp_path: Path):
    ring = ReloadingKeyring(tmp_path)
    signer = ensure_signer(tmp_path, "policy")  # policy started after the verifier
    decision = a_decision()
    assert SignedDecision.issue(signer, decision).verify(ring, issuers={"policy"}) == decision
    assert ring.key(signer.key_id) == ring.keys[signer.key_id]


def test_a_reloading_keyring_still_binds_each_key_to_its_issuer(tmp_path: Path):
    ring = ReloadingKeyring(tmp_path)
    grant_signer = ensure_signer(tmp_path, "identity")
    with pytest.raises(SignatureError, match="may not sign"):
        SignedDecision.issue(grant_signer, a_decision()).verify(ring)
    with pytest.raises(SignatureError, match="unknown signing key"):
        SignedDecision.issue(POLICY, a_decision()).verify(ring)


# Envelopes as a commit before `Signed[Payload]` put them on the bus and in audit databases, signed with keys
# derived from fixed seeds: they must still parse, verify and serialize to the very same bytes.
RECORDED = {
    "identity": (SignedGrant, (
        '{"grant":{"grant_id":"g1","tenant":"acme","workspace":"default","user":"alice","roles":["member"],"c'
        'hannel":"cli","session_id":"s1","issued_at":"2026-12-04T00:00:00Z","expires_at":"2026-12-04T00:10:00'
        'Z","approval_mode":null,"memory_scope":"tenant"},"key_id":"identity:FHJAGbQfIQk3BuZ8","signature":"W'
        'gP403rKkRHDevwt346BfK-fZ_3sE-lvvk2CRkdI3uFsDNq1fhgVfqV-O7vWTgsLT7R9ak_8zX_on-o7E4PcCg"}'
)),
    "policy": (SignedDecision, (
        '{"decision":{"decision_id":"d1","tenant":"acme","workspace":"default","session_id":"s1","call_id":"c'
        '1","tool":"terminal","digest":"b52b50afd389b8a0c2b1f97e1f47dacd260aedbab61837e2bb3cfd403840c3eb","ve'
        'rdict":"allow","reason":"ok","policy_ids":[],"pack_version":"","approver_group":null,"quorum":null,"'
        'approval":null,"explanation":"","facts":[],"issued_at":"2026-12-04T00:00:00Z","expires_at":"2026-12-'
        '04T00:01:00Z"},"key_id":"policy:BkHiaLUirhwKovgD","signature":"FYWvpCHGimmvDOARNeZVXgqqJWqlNBdKXv_nv'
        'd9JyFzP_GIF39OxmRTko82s_-2ru2pb3pkMEAIS_KEUwOEvAg"}'
)),
    "audit": (SignedCheckpoint, (
        '{"checkpoint":{"tenant":"acme","seq":3,"hash":"ababababababababababababababababababababababababababa'
        'bababababab","prev_seq":1,"fingerprints":"0123abcdffff0000","issued_at":"2026-12-04T00:00:00Z"},"key'
        '_id":"audit:uEay_hf_Ikp4QO-R","signature":"9gGf8K_Dd2n8ssY2psDYnYBLmyeQZ9wPrjwQEjd2ftcs7CFzjQ1eKq1iq'
        'iX8XjY7khIXLEVNRdgnZGxuPs6pAQ"}'
)),
}


def seeded(issuer: str) -> Signer:
    return Signer(issuer, Ed25519PrivateKey.from_private_bytes(hashlib.sha256(issuer.encode()).digest()))


@pytest.mark.parametrize("issuer", sorted(RECORDED))
def test_envelopes_recorded_before_the_generic_type_still_verify_byte_for_byte(issuer: str):
    envelope, recorded = RECORDED[issuer]
    ring = Keyring()
    ring.trust(issuer, seeded(issuer).private_key.public_key())
    signed = envelope.model_validate_json(recorded)
    payload = signed.verify(ring, now=datetime(2026, 12, 4, 0, 1, tzinfo=UTC))
    assert payload == signed.payload == getattr(signed, envelope.payload_field)
    assert signed.model_dump_json() == recorded
    assert envelope.issue(seeded(issuer), payload) == signed  # Ed25519 signatures are deterministic


def _signer_key_id(keys_dir: str) -> str:
    from caduceus_contracts import ensure_signer as ensure

    return ensure(Path(keys_dir), "audit").key_id


def test_replicas_starting_together_make_one_key_and_all_use_it(tmp_path) -> None:
    from concurrent.futures import ProcessPoolExecutor

    for attempt in range(5):
        keys = tmp_path / f"keys-{attempt}"
        with ProcessPoolExecutor(6) as pool:
            ids = set(pool.map(_signer_key_id, [str(keys)] * 12))
        assert len(ids) == 1, ids
        assert (keys / "audit.pub").read_bytes() == ensure_signer(keys, "audit").public_pem()
        assert oct((keys / "audit.key").stat().st_mode & 0o777) == "0o600"
