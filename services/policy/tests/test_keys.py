"""Remembered grant verifications: a grant verified once is not verified again, and memory never admits a grant
that would not verify now (forged content or signature under a known grant id, an expired grant, a retired key)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from caduceus_contracts import GrantExpired, SessionGrant, SignatureError, SignedGrant, Signer, ensure_signer, utcnow
from caduceus_policy.keys import TrustedKeys


def a_grant(identity: Signer, *, roles: tuple[str, ...] = ("member",), minutes: float = 5) -> SignedGrant:
    now = utcnow()
    return SignedGrant.issue(identity, SessionGrant(
        tenant="acme", workspace="default", user="alice", roles=roles, channel="cli", session_id="s1",
        issued_at=now, expires_at=now + timedelta(minutes=minutes)))


class CountingKey:
    """Identity's public key, counting the signatures it is asked to check."""

    def __init__(self, key) -> None:  # type: ignore[no-untyped-def]
        self.key = key
        self.checked = 0

    def verify(self, signature: bytes, data: bytes) -> None:
        self.checked += 1
        self.key.verify(signature, data)


@pytest.fixture
def keys(tmp_path: Path) -> TrustedKeys:
    ensure_signer(tmp_path, "identity")
    keys = TrustedKeys(tmp_path)
    for key_id, (issuer, public) in list(keys.keyring.keys.items()):
        keys.keyring.keys[key_id] = (issuer, CountingKey(public))  # type: ignore[assignment]
    return keys


def checked(keys: TrustedKeys) -> int:
    return sum(public.checked for _, public in keys.keyring.keys.values())  # type: ignore[attr-defined]


def test_a_grant_is_verified_once_for_all_the_calls_of_its_turn(keys: TrustedKeys, tmp_path: Path) -> None:
    grant = a_grant(ensure_signer(tmp_path, "identity"))
    for _ in range(5):
        assert keys.verify_grant(grant).user == "alice"
    assert checked(keys) == 1


def test_a_forged_grant_reusing_a_verified_grant_id_is_refused(keys: TrustedKeys, tmp_path: Path) -> None:
    genuine = a_grant(ensure_signer(tmp_path, "identity"))
    keys.verify_grant(genuine)
    raised = genuine.model_copy(update={"grant": genuine.grant.model_copy(update={"roles": ("admin",)})})
    assert raised.grant.grant_id == genuine.grant.grant_id and raised.signature == genuine.signature
    with pytest.raises(SignatureError, match="does not match"):
        keys.verify_grant(raised)
    assert keys.verify_grant(genuine).roles == ("member",)


def test_a_verified_grant_with_another_signature_is_checked_again(keys: TrustedKeys, tmp_path: Path) -> None:
    genuine = a_grant(ensure_signer(tmp_path, "identity"))
    keys.verify_grant(genuine)
    forger = Signer.generate("identity")
    resigned = genuine.model_copy(update={"signature": forger.sign(genuine.grant.model_dump(mode="json"))})
    with pytest.raises(SignatureError, match="does not match"):
        keys.verify_grant(resigned)


def test_a_remembered_grant_is_refused_once_it_has_expired(keys: TrustedKeys, tmp_path: Path) -> None:
    grant = a_grant(ensure_signer(tmp_path, "identity"), minutes=1)
    assert keys.verify_grant(grant).user == "alice"
    with pytest.raises(GrantExpired, match="expired at"):
        keys.verify_grant(grant, now=grant.grant.expires_at)
    with pytest.raises(GrantExpired):
        keys.verify_grant(grant, now=grant.grant.expires_at + timedelta(hours=1))


def test_grants_of_a_retired_identity_key_are_refused_though_remembered(tmp_path: Path) -> None:
    old = ensure_signer(tmp_path, "identity")
    keys = TrustedKeys(tmp_path)
    before = a_grant(old)
    keys.verify_grant(before)
    # Identity rotates its key: the old public key file is replaced, and the next grant names the new key.
    (tmp_path / "identity.key").unlink()
    new = ensure_signer(tmp_path, "identity")
    assert keys.verify_grant(a_grant(new)).user == "alice"
    with pytest.raises(SignatureError, match="unknown signing key"):
        keys.verify_grant(before)


def test_memory_of_verified_grants_is_bounded(tmp_path: Path) -> None:
    identity = ensure_signer(tmp_path, "identity")
    keys = TrustedKeys(tmp_path, max_remembered=3)
    grants = [a_grant(identity) for _ in range(5)]
    for grant in grants:
        keys.verify_grant(grant)
    assert len(keys._verified) == 3
    assert all(keys.verify_grant(grant).grant_id == grant.grant.grant_id for grant in grants)
