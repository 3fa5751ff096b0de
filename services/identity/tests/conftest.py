"""Fixtures for identity tests: a tenants file of two tenants, keys in a temp dir, and token forging tools."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from caduceus_directory.testing import TENANTS
from caduceus_identity.adapters.dev_issuer import DevIssuer


@pytest.fixture()
def tenants_file(tmp_path: Path) -> Path:
    path = tmp_path / "tenants.yaml"
    path.write_text(TENANTS)
    return path


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Forger:
    """Makes tokens the way an attacker (or a broken provider) would, with or without the issuer's key."""

    issuer: str
    key: ec.EllipticCurvePrivateKey
    kid: str

    def claims(self, *, tenant: str = "acme", user: str = "alice", audience: str = "caduceus",
               lifetime_s: int = 600, starts_in_s: int = 0, **extra) -> dict:
        """Claims as the dev issuer writes them, shifted in time as a test needs; extra=None drops a claim."""
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": audience, "sub": user, "tenant": tenant, "groups": [],
                  "email": f"{user}@{tenant}.example", "iat": now + starts_in_s, "nbf": now + starts_in_s,
                  "exp": now + starts_in_s + lifetime_s}
        claims.update(extra)
        return {name: value for name, value in claims.items() if value is not None}

    def signed(self, claims: dict, *, key: ec.EllipticCurvePrivateKey | None = None, kid: str | None = None) -> str:
        """ES256 with the issuer's own key (a token only a compromise or a bug could produce), or another key."""
        return jwt.encode(claims, key or self.key, algorithm="ES256", headers={"kid": kid or self.kid})

    def unsigned(self, claims: dict) -> str:
        """An `alg: none` token: header and payload, empty signature."""
        header = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": self.kid}).encode())
        return f"{header}.{b64(json.dumps(claims).encode())}."

    def hmac_with_public_key(self, claims: dict) -> str:
        """HS256 keyed with the issuer's public key PEM: the classic algorithm-confusion attack."""
        secret = self.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
        header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": self.kid}).encode())
        signing_input = f"{header}.{b64(json.dumps(claims).encode())}"
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64(signature)}"


@pytest.fixture()
def forger(issuer: DevIssuer) -> Forger:
    """Forges tokens in the name of the `issuer` fixture each test module provides."""
    return Forger(issuer.issuer_url, issuer.key, issuer.key_id)


@pytest.fixture(scope="module")
def directory_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tenants") / "tenants.yaml"
    path.write_text(TENANTS)
    return path
