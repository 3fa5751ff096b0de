"""DEVELOPMENT ONLY: the dev issuer's sign-in page and OAuth 2.0 authorization-code flow.

A web app (the approvals UI) sends a person to /authorize; the page lists the people of
tenants.yaml and signs in whoever is clicked, with no password: anyone who can reach the dev
issuer can be anyone. /oauth/token then trades the one-time code (PKCE-checked) for an ID
token with the app's nonce. Production uses the organization's provider instead.
"""

from __future__ import annotations

import base64
import hashlib
import html
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from caduceus_directory import Directory

CODE_TTL_S = 120
_PARAMS = ("client_id", "redirect_uri", "state", "nonce", "code_challenge", "code_challenge_method", "scope")


@dataclass(frozen=True)
class _Grant:
    tenant: str
    user: str
    client_id: str
    redirect_uri: str
    nonce: str
    code_challenge: str
    expires: float


def _loopback(uri: str) -> bool:
    """Dev sign-in only sends codes back to this machine."""
    parts = urlsplit(uri)
    return parts.scheme in ("http", "https") and parts.hostname in ("127.0.0.1", "localhost", "::1")


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


class SignInIssuer(Protocol):
    """What the sign-in flow needs of its issuer (the DevIssuer): the people, and an ID token for one of them."""

    directory: Callable[[], Directory]

    def id_token(self, tenant: str, user: str, nonce: str = "") -> tuple[str, int]: ...


class DevLogin:
    """The /authorize page and /oauth/token endpoint of a DevIssuer."""

    def __init__(self, issuer: SignInIssuer) -> None:
        self.issuer = issuer
        self._codes: dict[str, _Grant] = {}

    def routes(self) -> list[Route]:
        return [Route("/authorize", self.authorize, methods=["GET", "POST"]),
                Route("/oauth/token", self.token, methods=["POST"])]

    async def authorize(self, request: Request) -> Response:
        params = dict(request.query_params) if request.method == "GET" else {
            k: str(v) for k, v in (await request.form()).items()}
        problem = self._check(params)
        if problem:
            return HTMLResponse(f"<p>Dev sign-in refused: {html.escape(problem)}</p>", status_code=400)
        if request.method == "GET" or "who" not in params:
            return HTMLResponse(self._page(params))
        tenant, _, user = params["who"].partition("/")
        if user not in self.issuer.directory().tenants.get(tenant, _NoTenant).users:
            return HTMLResponse("<p>Dev sign-in refused: unknown person</p>", status_code=400)
        code = secrets.token_urlsafe(32)
        self._codes[code] = _Grant(tenant, user, params["client_id"], params["redirect_uri"], params.get("nonce", ""),
                                   params.get("code_challenge", ""), time.monotonic() + CODE_TTL_S)
        query = urlencode({"code": code, "state": params.get("state", "")})
        return RedirectResponse(f"{params['redirect_uri']}?{query}", status_code=303)

    @staticmethod
    def _check(params: dict[str, str]) -> str | None:
        if params.get("response_type", "code") != "code":
            return "only response_type=code is supported"
        if not params.get("client_id"):
            return "client_id is missing"
        if not _loopback(params.get("redirect_uri", "")):
            return "redirect_uri must be an http(s) URL on this machine (127.0.0.1 or localhost)"
        if params.get("code_challenge") and params.get("code_challenge_method", "plain") != "S256":
            return "only code_challenge_method=S256 is supported"
        return None

    def _page(self, params: dict[str, str]) -> str:
        hidden = "".join(f'<input type="hidden" name="{k}" value="{html.escape(params[k])}">'
                         for k in ("response_type", *_PARAMS) if k in params)
        people = []
        for tenant_name, tenant in self.issuer.directory().tenants.items():
            for name, user in tenant.users.items():
                roles = ", ".join(user.roles) or "no role"
                people.append(f'<button type="submit" name="who" value="{html.escape(tenant_name)}/{html.escape(name)}">'
                              f"{html.escape(name)}@{html.escape(tenant_name)} <small>({html.escape(roles)})</small>"
                              "</button>")
        return ("<!doctype html><html lang=en><meta charset=utf-8>"
                "<meta name=viewport content='width=device-width, initial-scale=1'><title>Dev sign-in</title>"
                "<style>body{font:16px system-ui,sans-serif;max-width:30rem;margin:2rem auto;padding:0 1rem}"
                "button{display:block;width:100%;margin:.4rem 0;padding:.7rem;font:inherit;text-align:left}"
                ".warn{background:#fff4d6;padding:.6rem;border-radius:6px}</style>"
                "<h1>Caduceus dev sign-in</h1><p class=warn>Development only: anyone who can reach this page "
                "can sign in as anyone in tenants.yaml.</p><form method=post action=/authorize>"
                f"{hidden}{''.join(people)}</form></html>")

    async def token(self, request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        if form.get("grant_type") != "authorization_code":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        grant = self._codes.pop(form.get("code", ""), None)  # single use, whatever happens next
        if grant is None or time.monotonic() > grant.expires:
            return JSONResponse({"error": "invalid_grant", "error_description": "unknown, used or expired code"},
                                status_code=400)
        if form.get("client_id") != grant.client_id or form.get("redirect_uri") != grant.redirect_uri:
            return JSONResponse({"error": "invalid_grant", "error_description": "client or redirect_uri differs"},
                                status_code=400)
        if grant.code_challenge and _s256(form.get("code_verifier", "")) != grant.code_challenge:
            return JSONResponse({"error": "invalid_grant", "error_description": "PKCE verification failed"},
                                status_code=400)
        id_token, expires_in = self.issuer.id_token(grant.tenant, grant.user, grant.nonce)
        return JSONResponse({"access_token": id_token, "id_token": id_token, "token_type": "Bearer",
                             "expires_in": expires_in})


class _NoTenant:
    users: dict = {}
