"""Tokens from an independent OIDC implementation (PyPI `oidc-provider-mock`, RS256, no `kid` in its tokens),
on loopback, trusted by one tenant through tenants.yaml: the real authorization-code flow, the token
attacks, and a key rotation in the middle of the run.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import jwt
import oidc_provider_mock
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from caduceus_directory import DirectorySource
from caduceus_embedded.ports import free_port
from caduceus_identity.adapters.issuers import DeploymentIssuer, IssuerRegistry, VerifierTiming
from caduceus_oidc import Refused, TokenRefused

CLIENT_ID = "caduceus"
# The provider's own dependencies (authlib) warn about their deprecations; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@contextmanager
def provider(port: int = 0) -> Iterator[str]:
    """oidc-provider-mock on loopback; its issuer is the URL it is reached at."""
    with oidc_provider_mock.run_server_in_thread(port=port) as server:
        yield f"http://localhost:{server.server_port}"


def sign_in(base: str, sub: str, claims: dict) -> str:
    """The ID token of the authorization-code flow, the way a relying party gets it."""
    assert httpx.put(f"{base}/users/{sub}", json=claims).status_code == 204
    authorize = httpx.post(f"{base}/oauth2/authorize", data={"sub": sub},
                           params={"client_id": CLIENT_ID, "redirect_uri": "http://127.0.0.1/callback",
                                   "response_type": "code", "scope": "openid email"})
    code = parse_qs(urlparse(authorize.headers["location"]).query)["code"][0]
    token = httpx.post(f"{base}/oauth2/token", data={"grant_type": "authorization_code", "code": code,
                                                     "redirect_uri": "http://127.0.0.1/callback",
                                                     "client_id": CLIENT_ID, "client_secret": "any"})
    return token.json()["id_token"]


def tenants_trusting(path: Path, issuer: str) -> Path:
    path.write_text(f"""\
tenants:
  acme:
    display_name: Acme Corp
    issuers:
      - {{url: "{issuer}", audience: {CLIENT_ID}, username_claim: sub, groups_claim: groups}}
    groups: {{acme-admins: [admin]}}
    users:
      alice: {{email: alice@acme.example, roles: [member]}}
  globex:
    display_name: Globex
    users:
      alice: {{email: alice@globex.example, roles: [owner]}}
""")
    return path


@pytest.fixture(scope="module")
def mock_provider() -> Iterator[str]:
    with provider() as base:
        yield base


@pytest.fixture()
async def registry(mock_provider: str, tmp_path: Path):
    directory = DirectorySource(tenants_trusting(tmp_path / "tenants.yaml", mock_provider))
    registry = IssuerRegistry(directory, DeploymentIssuer(f"http://127.0.0.1:{free_port()}"),
                              VerifierTiming(refetch_interval_s=0))
    yield registry
    await registry.close()


async def signed_in(base: str, sub: str = "alice", **claims) -> str:
    return await asyncio.to_thread(sign_in, base, sub, {"email": f"{sub}@acme.example", **claims})


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def refusal(registry: IssuerRegistry, token: str, tenant: str | None = "acme") -> str:
    with pytest.raises(Refused) as refused:
        await registry.verify(token, tenant)
    assert token not in refused.value.reply_text
    return refused.value.reason


async def test_a_token_from_the_tenants_own_provider_names_the_person_and_their_groups(registry, mock_provider):
    token = await signed_in(mock_provider, groups=["acme-admins"], tenant="globex")
    assert "kid" not in jwt.get_unverified_header(token)
    identity = await registry.verify(token, "acme")
    # The tenant is the one that trusts the provider, whatever the token claims.
    assert (identity.subject, identity.tenant, identity.groups, identity.issuer) == (
        "alice", "acme", ("acme-admins",), mock_provider)
    member = registry.directory().member(identity)
    assert member.roles == ("admin", "member", "guest")


async def test_the_same_token_is_refused_for_a_tenant_that_does_not_trust_the_provider(registry, mock_provider):
    token = await signed_in(mock_provider)
    reason = await refusal(registry, token, "globex")
    assert reason == f"token was issued by {mock_provider!r}, which tenant 'globex' does not trust"


async def test_an_unsigned_token_in_the_providers_name_is_refused(registry, mock_provider):
    claims = jwt.decode(await signed_in(mock_provider), options={"verify_signature": False})
    forged = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64({**claims, 'sub': 'carol'})}."
    assert await refusal(registry, forged) == "token is unsigned (algorithm 'none'), which is never accepted"


async def test_hs256_keyed_with_the_providers_public_key_is_refused(registry, mock_provider):
    async with httpx.AsyncClient() as client:
        public = jwt.PyJWK((await client.get(f"{mock_provider}/jwks")).json()["keys"][0]).key
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    claims = jwt.decode(await signed_in(mock_provider), options={"verify_signature": False})
    header, payload = b64({"alg": "HS256", "typ": "JWT"}), b64(claims)
    signature = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    forged = f"{header}.{payload}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
    assert "algorithm 'HS256', which is not accepted" in await refusal(registry, forged)


async def test_a_token_signed_by_an_attacker_in_the_providers_name_is_refused(registry, mock_provider):
    claims = jwt.decode(await signed_in(mock_provider), options={"verify_signature": False})
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode({**claims, "sub": "carol"}, attacker, algorithm="RS256")
    assert await refusal(registry, forged) == f"token names no key and matches none of {mock_provider}'s RS256 keys"


async def test_a_payload_swapped_under_the_providers_signature_is_refused(registry, mock_provider):
    header, payload, signature = (await signed_in(mock_provider)).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "==="))
    swapped = f"{header}.{b64({**claims, 'groups': ['acme-admins']})}.{signature}"
    assert (await refusal(registry, swapped)).startswith("token names no key and matches none of")


async def test_a_token_for_another_client_is_refused(registry, mock_provider):
    def other_client() -> str:
        assert httpx.put(f"{mock_provider}/users/alice", json={"email": "alice@acme.example"}).status_code == 204
        authorize = httpx.post(f"{mock_provider}/oauth2/authorize", data={"sub": "alice"},
                               params={"client_id": "payroll", "redirect_uri": "http://127.0.0.1/cb",
                                       "response_type": "code", "scope": "openid"})
        code = parse_qs(urlparse(authorize.headers["location"]).query)["code"][0]
        return httpx.post(f"{mock_provider}/oauth2/token",
                          data={"grant_type": "authorization_code", "code": code, "client_id": "payroll",
                                "redirect_uri": "http://127.0.0.1/cb", "client_secret": "x"}).json()["id_token"]

    token = await asyncio.to_thread(other_client)
    assert await refusal(registry, token) == "token is for audience \"['payroll']\", not 'caduceus'"


async def test_an_oversized_token_is_refused_before_anything_is_fetched(registry):
    assert await refusal(registry, "eyJ" + "A" * 20_000 + ".e30.sig") == (
        "token is 20011 characters long, more than the 16384 accepted")


async def test_a_rotated_key_is_fetched_mid_run_and_the_old_one_stops_counting(tmp_path: Path):
    port = free_port()
    with provider(port) as base:
        directory = DirectorySource(tenants_trusting(tmp_path / "tenants.yaml", base))
        registry = IssuerRegistry(directory, None, VerifierTiming(refetch_interval_s=0))
        old_token = await signed_in(base)
        assert (await registry.verify(old_token, "acme")).subject == "alice"
    # The provider restarts on the same address with a new key: the rotation a verifier must follow.
    with provider(port) as base:
        try:
            new_token = await signed_in(base)
            assert (await registry.verify(new_token, "acme")).subject == "alice"
            reason = await refusal(registry, old_token)
            assert reason == f"token names no key and matches none of {base}'s RS256 keys"
        finally:
            await registry.close()


async def test_a_stopped_provider_refuses_with_a_reason_to_retry(tmp_path: Path):
    port = free_port()
    with provider(port) as base:
        token = await signed_in(base)
    directory = DirectorySource(tenants_trusting(tmp_path / "tenants.yaml", base))
    registry = IssuerRegistry(directory, None, VerifierTiming(timeout_s=2))
    try:
        with pytest.raises(TokenRefused) as refused:
            await registry.verify(token, "acme")
    finally:
        await registry.close()
    assert refused.value.reason.startswith(f"cannot check the token: the OIDC discovery document at {base}")
    assert "try again shortly" in refused.value.remedy
