"""Tokens against the real dev issuer over loopback HTTP: the good one passes, every forgery is refused with a reason."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from caduceus_directory import DirectorySource
from caduceus_embedded.ports import free_port
from caduceus_identity.adapters.dev_issuer import (
    DevIssuer,
    DevIssuerServer,
    load_or_create_key,
)
from caduceus_identity.devtoken import DevTokenError, mint_dev_token
from caduceus_oidc import OidcVerifier, TokenRefused


async def serve_issuer(keys_dir: Path, directory_file: Path, port: int | None = None) -> DevIssuerServer:
    port = port or free_port()
    issuer = DevIssuer(load_or_create_key(keys_dir / "dev-issuer.pem"), f"http://127.0.0.1:{port}", "caduceus",
                       DirectorySource(directory_file))
    server = DevIssuerServer(issuer, "127.0.0.1", port)
    await server.start()
    return server


@pytest.fixture(scope="module")
async def issuer_server(directory_file: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DevIssuerServer]:
    server = await serve_issuer(tmp_path_factory.mktemp("keys"), directory_file)
    yield server
    await server.stop()


@pytest.fixture()
def issuer(issuer_server: DevIssuerServer) -> DevIssuer:
    return issuer_server.issuer


@pytest.fixture()
async def verifier(issuer: DevIssuer) -> AsyncIterator[OidcVerifier]:
    verifier = OidcVerifier(issuer.issuer_url, "caduceus")
    yield verifier
    await verifier.close()


async def mint(issuer: DevIssuer, tenant: str = "acme", user: str = "alice", **options) -> str:
    # The client is synchronous and the issuer serves in this loop: call it from a thread.
    return await asyncio.to_thread(mint_dev_token, issuer.issuer_url, tenant, user, **options)


async def refusal(verifier: OidcVerifier, token: str) -> str:
    """The reason a token is refused; it must never quote the token."""
    with pytest.raises(TokenRefused) as refused:
        await verifier.verify(token)
    reason = refused.value.reason
    if len(token) > 20:
        assert token not in reason and token not in refused.value.reply_text
    return reason


async def test_dev_token_proves_the_person(issuer: DevIssuer, verifier: OidcVerifier) -> None:
    identity = await verifier.verify(await mint(issuer, "acme", "carol"))
    assert (identity.subject, identity.tenant, identity.groups, identity.email, identity.email_verified) == (
        "carol", "acme", (), "carol@acme.example", True)
    assert identity.issuer == issuer.issuer_url


async def test_requested_roles_are_the_tokens_groups(issuer: DevIssuer, verifier: OidcVerifier) -> None:
    identity = await verifier.verify(await mint(issuer, roles=["acme-admins", "golfers"], ttl_s=120))
    assert identity.groups == ("acme-admins", "golfers")
    assert (identity.expires_at - datetime.now(UTC)).total_seconds() <= 120


async def test_discovery_names_the_issuer_and_its_keys(issuer: DevIssuer) -> None:
    async with httpx.AsyncClient() as client:
        discovery = (await client.get(f"{issuer.issuer_url}/.well-known/openid-configuration")).json()
        jwks = (await client.get(discovery["jwks_uri"])).json()
    assert discovery["issuer"] == issuer.issuer_url
    assert [(key["kid"], key["alg"], key["kty"]) for key in jwks["keys"]] == [(issuer.key_id, "ES256", "EC")]
    assert "d" not in jwks["keys"][0]


async def test_dev_issuer_refuses_a_stranger_with_400(issuer: DevIssuer) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{issuer.issuer_url}/dev/token", json={"tenant": "acme", "user": "mallory"})
    assert response.status_code == 400
    assert "user 'mallory' is not a member of tenant 'acme'" in response.json()["error"]
    with pytest.raises(DevTokenError, match="unknown tenant 'initech'"):
        await mint(issuer, "initech", "alice")


async def test_dev_issuer_refuses_a_malformed_request_with_400(issuer: DevIssuer) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{issuer.issuer_url}/dev/token", content=b"{not json")
        too_long = await client.post(f"{issuer.issuer_url}/dev/token",
                                     json={"tenant": "acme", "user": "alice", "ttl_s": 10**9})
    assert response.status_code == 400 and '"tenant": "..."' in response.json()["error"]
    assert too_long.status_code == 400 and "ttl_s" in too_long.json()["error"]


async def test_expired_token_is_refused(forger, verifier: OidcVerifier) -> None:
    token = forger.signed(forger.claims(starts_in_s=-3600, lifetime_s=600))
    assert (await refusal(verifier, token)).startswith("token expired at ")


async def test_token_expired_within_the_clock_leeway_still_passes(forger, verifier: OidcVerifier) -> None:
    token = forger.signed(forger.claims(starts_in_s=-610, lifetime_s=600))
    assert (await verifier.verify(token)).subject == "alice"


async def test_not_yet_valid_token_is_refused(forger, verifier: OidcVerifier) -> None:
    token = forger.signed(forger.claims(starts_in_s=600))
    assert (await refusal(verifier, token)).startswith("token is not valid before ")


async def test_token_from_a_wrong_issuer_is_refused(forger, verifier: OidcVerifier, issuer: DevIssuer) -> None:
    token = forger.signed(forger.claims(iss="https://evil.example"))
    assert await refusal(verifier, token) == (
        f"token was not issued by {issuer.issuer_url} (it names 'https://evil.example')")


async def test_token_for_another_audience_is_refused(forger, verifier: OidcVerifier) -> None:
    token = forger.signed(forger.claims(audience="payroll"))
    assert await refusal(verifier, token) == "token is for audience 'payroll', not 'caduceus'"


async def test_unsigned_token_is_refused(forger, verifier: OidcVerifier) -> None:
    reason = await refusal(verifier, forger.unsigned(forger.claims()))
    assert reason == "token is unsigned (algorithm 'none'), which is never accepted"


async def test_hs256_keyed_with_the_public_key_is_refused(forger, verifier: OidcVerifier) -> None:
    reason = await refusal(verifier, forger.hmac_with_public_key(forger.claims()))
    assert reason == "token is signed with algorithm 'HS256', which is not accepted (accepted: RS256, ES256, EdDSA)"


async def test_token_signed_with_an_unknown_key_is_refused(forger, verifier: OidcVerifier,
                                                           issuer: DevIssuer) -> None:
    token = forger.signed(forger.claims(), key=ec.generate_private_key(ec.SECP256R1()), kid="attacker-key")
    assert await refusal(verifier, token) == (
        f"token was signed with key 'attacker-key', which {issuer.issuer_url} does not publish")


async def test_token_signed_with_another_key_under_the_issuers_kid_is_refused(forger, verifier: OidcVerifier) -> None:
    token = forger.signed(forger.claims(), key=ec.generate_private_key(ec.SECP256R1()))
    assert (await refusal(verifier, token)).startswith("token signature does not match ")


async def test_token_with_a_swapped_payload_is_refused(forger, verifier: OidcVerifier, issuer: DevIssuer) -> None:
    header, _, signature = (await mint(issuer, "acme", "alice")).split(".")
    evil_payload = forger.unsigned(forger.claims(user="carol", roles=["admin"])).split(".")[1]
    assert (await refusal(verifier, f"{header}.{evil_payload}.{signature}")).startswith(
        "token signature does not match ")


async def test_token_without_a_tenant_is_refused(forger, verifier: OidcVerifier) -> None:
    token = forger.signed(forger.claims(tenant=None))
    assert await refusal(verifier, token) == "token lacks the required 'tenant' claim"


@pytest.mark.parametrize("garbage", [
    "", "   ", "garbage", "a.b.c", "eyJhbGciOiJFUzI1NiJ9.!!!.???", "x" * 5000,
    "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsifQ.e30",
])
async def test_garbage_is_refused_as_not_a_token(garbage: str, verifier: OidcVerifier) -> None:
    reason = await refusal(verifier, garbage)
    assert reason in ("no token was sent with the message",
                      "token is not a well-formed JWT (expected header.payload.signature)")


async def test_token_from_another_dev_issuer_is_refused(directory_file: Path, tmp_path: Path,
                                                        verifier: OidcVerifier) -> None:
    other = await serve_issuer(tmp_path, directory_file)
    try:
        token = await mint(other.issuer)
    finally:
        await other.stop()
    assert "does not publish" in await refusal(verifier, token)


async def test_rotated_key_is_fetched_on_unknown_kid_but_not_more_often_than_allowed(
        directory_file: Path, tmp_path: Path) -> None:
    port = free_port()
    first = await serve_issuer(tmp_path / "old", directory_file, port)
    eager = OidcVerifier(first.issuer.issuer_url, "caduceus", refetch_interval_s=0)
    patient = OidcVerifier(first.issuer.issuer_url, "caduceus", refetch_interval_s=600)
    try:
        old_token = await mint(first.issuer)
        await eager.verify(old_token)
        await patient.verify(old_token)
        await first.stop()
        second = await serve_issuer(tmp_path / "new", directory_file, port)
        try:
            new_token = await mint(second.issuer)
            assert (await eager.verify(new_token)).subject == "alice"
            assert "does not publish" in await refusal(patient, new_token)
            assert "does not publish" in await refusal(eager, old_token)
        finally:
            await second.stop()
    finally:
        await eager.close()
        await patient.close()


async def test_unreachable_provider_refuses_with_a_reason(forger) -> None:
    verifier = OidcVerifier(f"http://127.0.0.1:{free_port()}", "caduceus", timeout_s=2)
    try:
        reason = await refusal(verifier, forger.signed(forger.claims()))
    finally:
        await verifier.close()
    assert reason.startswith("cannot check the token: the OIDC discovery document at http://127.0.0.1:")
    assert "did not answer" in reason


async def test_provider_naming_another_issuer_is_not_trusted(forger, issuer: DevIssuer) -> None:
    # Same server under another name: its discovery document says it is someone else, so nothing it signs counts.
    alias = issuer.issuer_url.replace("127.0.0.1", "localhost")
    verifier = OidcVerifier(alias, "caduceus")
    try:
        reason = await refusal(verifier, forger.signed(forger.claims(iss=alias)))
    finally:
        await verifier.close()
    assert f"names itself {issuer.issuer_url!r}; set CADUCEUS_OIDC_ISSUER_URL" in reason


def test_jwks_document_is_plain_json(issuer: DevIssuer) -> None:
    assert json.loads(json.dumps(issuer.jwks()))["keys"][0]["use"] == "sig"
