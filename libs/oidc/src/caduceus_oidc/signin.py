"""Signing people in with OpenID Connect: the authorization-code flow with PKCE, state and nonce.

Works with any provider that publishes a discovery document (Keycloak, Okta, Entra ID, the dev
issuer of the embedded stack). The ID token is checked by OidcVerifier, the same code that checks chat
tokens. Shared by the web pages people sign in to: the approvals UI and the web chat.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from urllib.parse import urlencode

import httpx
import jwt

from caduceus_oidc.identity import TokenRefused, VerifiedIdentity
from caduceus_oidc.verifier import OidcVerifier, ProviderUnavailable


class SignInFailed(Exception):
    """Sign-in did not complete; the message says why and what to do."""


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


class OidcClient:
    """One web page's sign-in at one provider: the authorization URL to send a browser to, and the code exchange."""

    def __init__(self, issuer_url: str, client_id: str, client_secret: str | None, redirect_uri: str, scopes: str,
                 verifier: OidcVerifier, http: httpx.AsyncClient) -> None:
        self.issuer_url = issuer_url.rstrip("/")
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.scopes = scopes
        self.verifier = verifier
        self.http = http

    async def metadata(self) -> dict:
        """The provider's discovery document, as the verifier of its ID tokens fetched and checked it."""
        try:
            document = await self.verifier.discovery()
        except ProviderUnavailable as exc:
            document, why = None, f" ({exc})"
        else:
            why = ""
        if document is None or not {"authorization_endpoint", "token_endpoint"} <= set(document):
            raise SignInFailed(f"the sign-in provider at {self.issuer_url} did not answer with a usable discovery "
                               f"document{why}; try again shortly, or check CADUCEUS_OIDC_ISSUER_URL")
        return document

    async def authorization_url(self, state: str, nonce: str, challenge: str) -> str:
        endpoint = (await self.metadata())["authorization_endpoint"]
        query = urlencode({"response_type": "code", "client_id": self.client_id, "redirect_uri": self.redirect_uri,
                           "scope": self.scopes, "state": state, "nonce": nonce, "code_challenge": challenge,
                           "code_challenge_method": "S256"})
        return f"{endpoint}?{query}"

    async def sign_in(self, code: str, code_verifier: str, nonce: str) -> VerifiedIdentity:
        """Exchange the code for an ID token and verify it (signature, issuer, audience, times, nonce)."""
        return (await self.sign_in_with_token(code, code_verifier, nonce))[0]

    async def sign_in_with_token(self, code: str, code_verifier: str, nonce: str) -> tuple[VerifiedIdentity, str]:
        """As `sign_in`, also returning the verified ID token (a page that speaks for the person keeps it)."""
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri,
                "client_id": self.client_id, "code_verifier": code_verifier}
        if self.client_secret:
            form["client_secret"] = self.client_secret
        endpoint = (await self.metadata())["token_endpoint"]
        try:
            response = await self.http.post(endpoint, data=form)
            body = response.json()
        except (httpx.HTTPError, ValueError):
            raise SignInFailed(f"the sign-in provider's token endpoint {endpoint} did not answer; try again") from None
        id_token = body.get("id_token") if isinstance(body, dict) else None
        if response.status_code != 200 or not isinstance(id_token, str):
            detail = body.get("error_description") or body.get("error") if isinstance(body, dict) else None
            raise SignInFailed(f"the sign-in provider refused the code ({detail or response.status_code}); "
                               "sign in again")
        try:
            identity = await self.verifier.verify(id_token)
        except TokenRefused as exc:
            raise SignInFailed(f"the ID token was refused: {exc.reason}") from None
        # The signature verified above; the nonce binds the token to this browser's sign-in.
        claims = jwt.decode(id_token, options={"verify_signature": False})
        if not secrets.compare_digest(str(claims.get("nonce", "")), nonce):
            raise SignInFailed("the ID token was issued for another sign-in (nonce mismatch); sign in again")
        return identity, id_token
