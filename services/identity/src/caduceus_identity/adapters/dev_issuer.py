"""The dev OIDC issuer: mints ES256 tokens for the people in tenants.yaml, over real HTTP.

It is what the embedded stack signs people in with, so the whole token path (discovery,
JWKS, signature, claims) is the one production uses with Keycloak, Okta or Entra ID.
Anyone who can reach it can mint a token: it listens on loopback and production disables
it (CADUCEUS_DEV_ISSUER_PORT=0) in favour of the organization's provider.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from caduceus_directory import Directory
from caduceus_identity.adapters.dev_login import DevLogin
from caduceus_oidc import Refused
from caduceus_web import HttpServer, HttpUnavailable

log = logging.getLogger(__name__)

ALGORITHM = "ES256"
DEFAULT_TTL_S = 3600
MAX_TTL_S = 86_400


class DevIssuerError(RuntimeError):
    """The dev issuer cannot start (its port is taken, its key file is unreadable)."""


class TokenRequest(BaseModel):
    """The body of `POST /dev/token`."""

    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(min_length=1, max_length=63)
    user: str = Field(min_length=1, max_length=256)
    roles: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = None
    ttl_s: int | None = Field(default=None, ge=1, le=MAX_TTL_S)
    # Another resource's audience, e.g. the MCP endpoint's (`caduceus-mcp`); unset: the deployment's.
    audience: str | None = Field(default=None, min_length=1, max_length=256)


def load_or_create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The issuer's P-256 key from a PEM file, created (mode 0600) on first start."""
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise DevIssuerError(
                f"cannot load the dev issuer key {path}: {exc}; delete the file to have a new key made"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise DevIssuerError(f"{path} is not a P-256 (ES256) private key; delete it to have a new key made")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    path.touch(mode=0o600)
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
    )
    log.info("created the dev issuer key %s", path)
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    """The public half as a JWK, with its RFC 7638 thumbprint as `kid`."""
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    required = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
    thumbprint = hashlib.sha256(json.dumps(required, sort_keys=True, separators=(",", ":")).encode()).digest()
    return {**required, "kid": _b64(thumbprint), "use": "sig", "alg": ALGORITHM}


class DevIssuer:
    """Mints tokens for the people in the directory and publishes its discovery document and JWKS.

    Requested roles become the token's `groups` (and `roles`), as a provider's group claims would:
    identity maps groups to roles only where the tenant's `groups:` says so.
    """

    def __init__(self, key: ec.EllipticCurvePrivateKey, issuer_url: str, audience: str,
                 directory: Callable[[], Directory]) -> None:
        self.key = key
        self.issuer_url = issuer_url.rstrip("/")
        self.audience = audience
        self.directory = directory
        self.jwk = public_jwk(key)

    @property
    def key_id(self) -> str:
        return self.jwk["kid"]

    def discovery(self) -> dict:
        """The OpenID Provider metadata a verifier starts from."""
        return {
            "issuer": self.issuer_url,
            "jwks_uri": f"{self.issuer_url}/jwks.json",
            # Development only (adapters/dev_login.py): the sign-in page lists everyone and asks no password.
            "authorization_endpoint": f"{self.issuer_url}/authorize",
            "token_endpoint": f"{self.issuer_url}/oauth/token",
            "response_types_supported": ["code", "id_token"],
            "grant_types_supported": ["authorization_code"],
            "code_challenge_methods_supported": ["S256"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [ALGORITHM],
            "claims_supported": ["iss", "aud", "sub", "tenant", "groups", "roles", "email", "email_verified", "iat",
                                 "nbf", "exp"],
        }

    def jwks(self) -> dict:
        return {"keys": [self.jwk]}

    def mint(self, request: TokenRequest, *, now: float | None = None, extra_claims: dict | None = None) -> str:
        """A signed token for a known user of a known tenant (plus extra_claims, e.g. a sign-in's nonce);
        Refused (the HTTP 400 text) otherwise."""
        user = self.directory().user(request.tenant, request.user)
        issued = int(now if now is not None else time.time())
        claims = {
            "iss": self.issuer_url,
            "aud": request.audience or self.audience,
            "sub": request.user,
            "tenant": request.tenant,
            "groups": list(request.roles or ()),
            "roles": list(request.roles) if request.roles is not None else list(user.roles),
            "email": user.email,
            "email_verified": True,
            "iat": issued,
            "nbf": issued,
            "exp": issued + (request.ttl_s or DEFAULT_TTL_S),
            "jti": uuid.uuid4().hex,
            **(extra_claims or {}),
        }
        return jwt.encode(claims, self.key, algorithm=ALGORITHM, headers={"kid": self.key_id})

    def id_token(self, tenant: str, user: str, nonce: str = "") -> tuple[str, int]:
        """The ID token a dev sign-in ends with, bound to the app's nonce, and its lifetime in seconds."""
        token = self.mint(TokenRequest(tenant=tenant, user=user), extra_claims={"nonce": nonce} if nonce else None)
        return token, DEFAULT_TTL_S

    def asgi_app(self) -> Starlette:
        async def discovery(_: Request) -> JSONResponse:
            return JSONResponse(self.discovery())

        async def jwks(_: Request) -> JSONResponse:
            return JSONResponse(self.jwks())

        async def token(request: Request) -> JSONResponse:
            try:
                body = TokenRequest.model_validate_json(await request.body())
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "body"
                return JSONResponse(
                    {"error": f"bad token request at {where}: {first['msg']}; send JSON "
                              '{"tenant": "...", "user": "...", "roles": [...], "ttl_s": 3600} '
                              "(roles and ttl_s are optional)"},
                    status_code=400,
                )
            try:
                minted = self.mint(body)
            except Refused as refused:
                return JSONResponse({"error": refused.reply_text}, status_code=400)
            log.info("dev issuer minted a token for %s@%s", body.user, body.tenant)
            return JSONResponse({"token": minted})

        return Starlette(routes=[
            Route("/.well-known/openid-configuration", discovery, methods=["GET"]),
            Route("/jwks.json", jwks, methods=["GET"]),
            Route("/dev/token", token, methods=["POST"]),
            *DevLogin(self).routes(),
        ])


class DevIssuerServer:
    """Serves a DevIssuer over HTTP on host:port in the running asyncio loop."""

    def __init__(self, issuer: DevIssuer, host: str, port: int) -> None:
        self.issuer = issuer
        self.host = host
        self.port = port
        self.http = HttpServer(issuer.asgi_app(), host, port, what="the dev OIDC issuer",
                               port_setting="CADUCEUS_DEV_ISSUER_PORT")

    async def start(self, timeout: float = 10.0) -> None:
        """Bind the port and serve until stop(); DevIssuerError when the port is taken."""
        try:
            await self.http.start(timeout)
        except HttpUnavailable as exc:
            raise DevIssuerError(str(exc)) from None
        log.warning("dev OIDC issuer at %s: anyone who can reach it can mint tokens (development only)",
                    self.issuer.issuer_url)

    async def stop(self) -> None:
        await self.http.stop()
