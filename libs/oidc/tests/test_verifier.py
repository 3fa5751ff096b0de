"""OidcVerifier against a provider served from memory (httpx.MockTransport): what passes, what is refused and why.

The identity service's tests run the same verifier against its dev issuer and an independent provider over
loopback; these pin the library on its own, without a server.
"""

from __future__ import annotations

import json
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from caduceus_oidc import OidcVerifier, ProviderUnavailable, TokenRefused, VerifiedIdentity

ISSUER = "https://id.example"
KEY = ec.generate_private_key(ec.SECP256R1())


def jwks(key: ec.EllipticCurvePrivateKey, kid: str) -> dict:
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    return {"keys": [{**public, "kid": kid, "use": "sig", "alg": "ES256"}]}


def provider(keys: dict, *, up: bool = True) -> httpx.AsyncClient:
    def answer(request: httpx.Request) -> httpx.Response:
        if not up:
            return httpx.Response(503)
        if request.url.path == "/.well-known/openid-configuration":
            return httpx.Response(200, json={"issuer": ISSUER, "jwks_uri": f"{ISSUER}/jwks"})
        return httpx.Response(200, json=keys)
    return httpx.AsyncClient(transport=httpx.MockTransport(answer))


def token(*, kid: str = "k1", key: ec.EllipticCurvePrivateKey = KEY, **claims) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": "caduceus", "sub": "alice", "tenant": "acme", "iat": now, "exp": now + 300,
            "groups": ["acme-admins"], **claims}
    return jwt.encode(body, key, algorithm="ES256", headers={"kid": kid})


async def refusal(verifier: OidcVerifier, text: str) -> str:
    with pytest.raises(TokenRefused) as refused:
        await verifier.verify(text)
    return refused.value.reason


async def test_a_token_from_the_trusted_issuer_names_the_person_tenant_and_groups():
    verifier = OidcVerifier(ISSUER, "caduceus", client=provider(jwks(KEY, "k1")))
    identity = await verifier.verify(token())
    assert isinstance(identity, VerifiedIdentity)
    assert (identity.subject, identity.tenant, identity.groups, identity.issuer) == (
        "alice", "acme", ("acme-admins",), ISSUER)


async def test_forged_expired_and_misaddressed_tokens_are_refused_with_the_failed_check():
    verifier = OidcVerifier(ISSUER, "caduceus", client=provider(jwks(KEY, "k1")), leeway_s=0)
    attacker = ec.generate_private_key(ec.SECP256R1())
    assert "signature does not match" in await refusal(verifier, token(key=attacker))
    assert "expired" in await refusal(verifier, token(exp=int(time.time()) - 60))
    assert "audience" in await refusal(verifier, token(aud="someone-else"))
    assert "does not publish" in await refusal(verifier, token(kid="unknown"))
    unsigned = jwt.encode({"sub": "alice"}, None, algorithm="none")
    assert "unsigned" in await refusal(verifier, unsigned)


async def test_an_unreachable_provider_refuses_with_a_reason_to_retry():
    verifier = OidcVerifier(ISSUER, "caduceus", client=provider({}, up=False))
    refused = await refusal(verifier, token())
    assert "cannot check the token" in refused and "503" in refused
    with pytest.raises(ProviderUnavailable):
        await verifier.discovery()
