"""The dev issuer's authorization-code flow (development only): codes go back to this machine only, are single
use, and are bound to the PKCE verifier and the sign-in's nonce."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from caduceus_directory import DirectorySource
from caduceus_identity.adapters.dev_issuer import DevIssuer

ISSUER = "http://127.0.0.1:8900"
REDIRECT = "http://127.0.0.1:8902/auth/callback"
VERIFIER = "a-long-random-pkce-verifier-of-the-approvals-ui-0123456789"
CHALLENGE = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode()
AUTHORIZE = {"response_type": "code", "client_id": "caduceus", "redirect_uri": REDIRECT, "state": "st-1",
             "nonce": "n-1", "code_challenge": CHALLENGE, "code_challenge_method": "S256"}


def issuer(tenants_file: Path) -> DevIssuer:
    return DevIssuer(ec.generate_private_key(ec.SECP256R1()), ISSUER, "caduceus", DirectorySource(tenants_file))


async def code_for(client: httpx.AsyncClient, who: str, **overrides: str) -> httpx.Response:
    return await client.post("/authorize", data={**AUTHORIZE, **overrides, "who": who})


async def test_signing_in_returns_a_code_that_buys_one_id_token_with_the_nonce(tenants_file: Path) -> None:
    dev = issuer(tenants_file)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=dev.asgi_app()), base_url=ISSUER) as client:
        page = await client.get("/authorize", params=AUTHORIZE)
        assert "Development only" in page.text and "dave@globex" in page.text
        back = await code_for(client, "acme/carol")
        assert back.status_code == 303 and back.headers["location"].startswith(REDIRECT)
        query = dict(parse_qsl(urlsplit(back.headers["location"]).query))
        assert query["state"] == "st-1"
        exchange = {"grant_type": "authorization_code", "code": query["code"], "redirect_uri": REDIRECT,
                    "client_id": "caduceus", "code_verifier": VERIFIER}
        tokens = await client.post("/oauth/token", data=exchange)
        claims = jwt.decode(tokens.json()["id_token"], options={"verify_signature": False})
        assert (claims["sub"], claims["tenant"], claims["nonce"], claims["roles"]) == ("carol", "acme", "n-1", ["admin"])
        again = await client.post("/oauth/token", data=exchange)
        assert again.status_code == 400 and "used or expired" in again.json()["error_description"]


async def test_a_code_without_its_pkce_verifier_buys_nothing(tenants_file: Path) -> None:
    dev = issuer(tenants_file)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=dev.asgi_app()), base_url=ISSUER) as client:
        code = dict(parse_qsl(urlsplit((await code_for(client, "acme/carol")).headers["location"]).query))["code"]
        stolen = await client.post("/oauth/token", data={"grant_type": "authorization_code", "code": code,
                                                          "redirect_uri": REDIRECT, "client_id": "caduceus",
                                                          "code_verifier": "guessed"})
        assert stolen.status_code == 400 and "PKCE" in stolen.json()["error_description"]


async def test_codes_only_go_back_to_this_machine_and_only_for_known_people(tenants_file: Path) -> None:
    dev = issuer(tenants_file)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=dev.asgi_app()), base_url=ISSUER) as client:
        away = await code_for(client, "acme/carol", redirect_uri="https://attacker.example/cb")
        assert away.status_code == 400 and "on this machine" in away.text
        nobody = await code_for(client, "acme/mallory")
        assert nobody.status_code == 400 and "unknown person" in nobody.text
