"""Ed25519 signatures over canonical JSON: decisions, approvals and session grants.

A signer holds one private key and a key id naming the issuing service; a
keyring holds the public keys a verifier trusts, each bound to the one issuer
allowed to use it, so a grant key cannot sign a decision. A service verifies with a
`ReloadingKeyring` over the shared keys directory.
"""

from __future__ import annotations

import base64
import functools
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from caduceus_contracts.canonical import canonical_json


class SignatureError(Exception):
    """A signature is missing, malformed, from an untrusted key, or does not match."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Signer:
    """Signs payloads as one issuer (`policy`, `approval`, `identity`)."""

    issuer: str
    private_key: Ed25519PrivateKey

    @functools.cached_property
    def key_id(self) -> str:  # derived from the key: computed once, not on every signature
        return key_id_for(self.private_key.public_key(), self.issuer)

    def sign(self, payload: Any) -> str:
        return _b64(self.private_key.sign(canonical_json(payload)))

    @classmethod
    def generate(cls, issuer: str) -> "Signer":
        return cls(issuer, Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, issuer: str, path: Path) -> "Signer":
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise SignatureError(f"{path} is not an Ed25519 private key")
        return cls(issuer, key)

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def key_id_for(public_key: Ed25519PublicKey, issuer: str) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"{issuer}:{_b64(raw)[:16]}"


@dataclass
class Keyring:
    """Public keys a verifier trusts, by key id, each bound to one issuer."""

    keys: dict[str, tuple[str, Ed25519PublicKey]] = field(default_factory=dict)

    def trust(self, issuer: str, public_key: Ed25519PublicKey) -> str:
        kid = key_id_for(public_key, issuer)
        self.keys[kid] = (issuer, public_key)
        return kid

    def trust_pem(self, issuer: str, pem: bytes) -> str:
        key = serialization.load_pem_public_key(pem)
        if not isinstance(key, Ed25519PublicKey):
            raise SignatureError(f"public key for {issuer} is not Ed25519")
        return self.trust(issuer, key)

    def verify(self, payload: Any, *, key_id: str, signature: str, issuers: set[str]) -> str:
        """Check the signature; return the issuer. Raises SignatureError otherwise."""
        return self.verify_bytes(canonical_json(payload), key_id=key_id, signature=signature, issuers=issuers)

    def verify_bytes(self, signed: bytes, *, key_id: str, signature: str, issuers: set[str]) -> str:
        """`verify` for a payload already in canonical JSON (for a verifier that also keys a cache on it)."""
        entry = self.keys.get(key_id)
        if entry is None:
            raise SignatureError(f"unknown signing key {key_id!r}")
        issuer, public_key = entry
        if issuer not in issuers:
            raise SignatureError(f"key {key_id!r} belongs to {issuer!r}, which may not sign this")
        try:
            public_key.verify(_unb64(signature), signed)
        except (InvalidSignature, ValueError) as exc:
            raise SignatureError("signature does not match the signed content") from exc
        return issuer


def load_keyring(keys_dir: Path) -> Keyring:
    """Trust every `<issuer>.pub` PEM in a directory (the embedded stack's key exchange)."""
    ring = Keyring()
    if keys_dir.is_dir():
        for pub in sorted(keys_dir.glob("*.pub")):
            ring.trust_pem(pub.stem, pub.read_bytes())
    return ring


class ReloadingKeyring(Keyring):
    """The keys in a keys directory (`<issuer>.pub`), read again when a signature names a key id not yet known.

    A service may start (and create its key) after the ones that verify its signatures, or rotate its
    key: reading the directory again on an unknown key id picks that up without a restart. Use it
    wherever a Keyring is expected.
    """

    def __init__(self, keys_dir: Path) -> None:
        super().__init__()
        self.keys_dir = keys_dir
        self.reload()

    def reload(self) -> None:
        self.keys = load_keyring(self.keys_dir).keys

    def key(self, key_id: str) -> tuple[str, Ed25519PublicKey] | None:
        """The issuer and public key of a key id, reading the directory again first when it is unknown."""
        if key_id not in self.keys:
            self.reload()
        return self.keys.get(key_id)

    def verify_bytes(self, signed: bytes, *, key_id: str, signature: str, issuers: set[str]) -> str:
        self.key(key_id)
        return super().verify_bytes(signed, key_id=key_id, signature=signature, issuers=issuers)


def write_once(path: Path, data: bytes) -> bytes:
    """Create `path` (mode 0600) holding `data` unless it exists; what the file holds afterwards.

    Replicas starting together may race to create one key: the file appears whole or not at all (written aside,
    then linked), so none reads a half-written key and all use the one that was linked first.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, aside = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(aside)
    return path.read_bytes()


def _replace(path: Path, data: bytes) -> None:
    fd, aside = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(aside, 0o644)
    os.replace(aside, path)


def ensure_signer(keys_dir: Path, issuer: str) -> Signer:
    """Load `<issuer>.key` from keys_dir, creating it (and `<issuer>.pub`) on first use."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    key_path = keys_dir / f"{issuer}.key"
    if not key_path.exists():
        write_once(key_path, Signer.generate(issuer).private_pem())
    signer = Signer.load(issuer, key_path)
    pub_path = keys_dir / f"{issuer}.pub"
    if not pub_path.exists() or pub_path.read_bytes() != signer.public_pem():
        _replace(pub_path, signer.public_pem())  # whole or not at all: keyrings read it meanwhile
    return signer
