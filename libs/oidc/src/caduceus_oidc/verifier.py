"""Verifying OIDC tokens against one trusted issuer: discovery, JWKS (cached, refetched on rotation), PyJWT.

Works with any standards-compliant provider (Keycloak, Okta, Entra ID, the dev issuer): keys come
from the discovery document's `jwks_uri`; a token without a `kid` is checked against the keys of
its algorithm. Every failure is a `TokenRefused` whose reason names the failed check in words a
person can act on. The token itself is never logged, stored or put in a reason.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
from jwt import PyJWK

from caduceus_oidc.identity import TokenRefused, VerifiedIdentity

# How long a provider refusing connections is asked again before a token is refused as uncheckable.
CONNECT_RETRY_S = 8.0
log = logging.getLogger(__name__)

# Asymmetric only: `none` and HS* (which a public key could "sign") are never accepted.
ALLOWED_ALGORITHMS = ("RS256", "ES256", "EdDSA")
REQUIRED_CLAIMS = ("sub", "exp", "iat")
# The contracts cap a chat message's token at this size; nothing longer is parsed.
MAX_TOKEN_BYTES = 16_384
# A token without a kid is tried against at most this many keys of its algorithm.
MAX_KEYS_WITHOUT_KID = 8
# Keys the provider stopped publishing stop being trusted within this long.
MAX_JWKS_AGE_S = 3600.0
# After a failed fetch, wait this long before asking the provider again.
RETRY_AFTER_FAILURE_S = 1.0
# header.payload.signature, each base64url (the signature is empty only in an `alg: none` token).
_COMPACT_JWS = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
UNREACHABLE_REMEDY = "try again shortly; if this persists, tell an operator that identity cannot reach its provider"


class ProviderUnavailable(Exception):
    """The issuer's discovery document or JWKS could not be fetched or made no sense."""


def _when(timestamp: Any) -> str:
    try:
        return datetime.fromtimestamp(float(timestamp), UTC).isoformat(timespec="seconds")
    except (TypeError, ValueError, OverflowError, OSError):
        return repr(timestamp)


class OidcVerifier:
    """Checks tokens from one issuer for one audience; answers a VerifiedIdentity or raises TokenRefused.

    The person is named by `username_claim`, their groups by `groups_claim`. The tenant is `tenant`
    when the issuer belongs to one tenant, else the token's `tenant_claim` (a deployment-wide issuer).
    """

    def __init__(self, issuer_url: str, audience: str, *, leeway_s: float = 30.0,
                 refetch_interval_s: float = 30.0, timeout_s: float = 5.0,
                 client: httpx.AsyncClient | None = None, clock: Callable[[], float] = time.monotonic,
                 tenant: str | None = None, tenant_claim: str = "tenant", username_claim: str = "sub",
                 groups_claim: str = "groups") -> None:
        self.issuer = issuer_url.rstrip("/")
        self.audience = audience
        self.tenant = tenant
        self.tenant_claim = tenant_claim
        self.username_claim = username_claim
        self.groups_claim = groups_claim
        self.leeway_s = leeway_s
        self.refetch_interval_s = refetch_interval_s
        self._client = client or httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)
        self._owns_client = client is None
        self._clock = clock
        self._jwks_uri: str | None = None
        self._discovery: dict[str, Any] | None = None
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at: float | None = None
        self._failed_at: float | None = None
        self._failure = ""
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def verify(self, token: str) -> VerifiedIdentity:
        """The identity a token proves, after checking signature, algorithm, issuer, audience, times and claims."""
        header = unverified_header(token)
        alg = header.get("alg")
        if alg in (None, "none", "None", "NONE"):
            raise TokenRefused("token is unsigned (algorithm 'none'), which is never accepted")
        if alg not in ALLOWED_ALGORITHMS:
            raise TokenRefused(
                f"token is signed with algorithm {str(alg)[:32]!r}, which is not accepted "
                f"(accepted: {', '.join(ALLOWED_ALGORITHMS)})"
            )
        kid = header.get("kid")
        if kid is None:
            return self._identity(await self._decode_without_kid(token, alg))
        if not isinstance(kid, str) or not kid:
            raise TokenRefused("token header names no usable signing key (kid)")
        key = await self._signing_key(kid)
        if key.algorithm_name != alg:
            raise TokenRefused(
                f"token claims algorithm {alg} but {self.issuer}'s key {kid[:64]!r} is for {key.algorithm_name}"
            )
        claims = self._decode(token, key, alg, kid)
        return self._identity(claims)

    async def _decode_without_kid(self, token: str, alg: str) -> dict[str, Any]:
        """A token naming no key (allowed by RFC 7515): the first key of its algorithm its signature matches."""
        for attempt in range(2):
            candidates = [(kid, key) for kid, key in self._keys.items() if key.algorithm_name == alg]
            for kid, key in candidates[:MAX_KEYS_WITHOUT_KID]:
                try:
                    return self._decode(token, key, alg, kid)
                except TokenRefused as refused:
                    if not refused.reason.startswith("token signature does not match"):
                        raise
            if attempt == 0:
                async with self._lock:
                    if not self._keys or self._may_fetch():
                        await self._refresh()
        if not self._keys and self._failure:
            raise TokenRefused(f"cannot check the token: {self._failure}", UNREACHABLE_REMEDY)
        raise TokenRefused(f"token names no key and matches none of {self.issuer}'s {alg} keys")

    def _decode(self, token: str, key: PyJWK, alg: str, kid: str) -> dict[str, Any]:
        required = [*REQUIRED_CLAIMS, *([] if self.tenant else [self.tenant_claim])]
        try:
            return jwt.decode(
                token, key.key, algorithms=[alg], audience=self.audience, issuer=self.issuer,
                leeway=self.leeway_s, options={"require": required},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRefused(f"token expired at {_when(self._signed_claims(token, key, alg).get('exp'))}") from None
        except jwt.ImmatureSignatureError:
            claims = self._signed_claims(token, key, alg)
            if "nbf" in claims and _later_than_now(claims["nbf"], self.leeway_s):
                raise TokenRefused(f"token is not valid before {_when(claims['nbf'])}") from None
            raise TokenRefused(
                f"token was issued in the future ({_when(claims.get('iat'))}); check the clocks of this host "
                "and of the identity provider"
            ) from None
        except jwt.InvalidIssuerError:
            named = self._signed_claims(token, key, alg).get("iss")
            raise TokenRefused(f"token was not issued by {self.issuer} (it names {str(named)[:200]!r})") from None
        except jwt.InvalidAudienceError:
            named = self._signed_claims(token, key, alg).get("aud")
            raise TokenRefused(f"token is for audience {str(named)[:200]!r}, not {self.audience!r}") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRefused(f"token lacks the required {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise TokenRefused(f"token signature does not match {self.issuer}'s key {kid[:64]!r}") from None
        except jwt.DecodeError:
            raise TokenRefused("token is not a well-formed JWT (its payload or signature cannot be decoded)") from None
        except jwt.PyJWTError as exc:
            raise TokenRefused(f"token is invalid: {exc}") from None

    @staticmethod
    def _signed_claims(token: str, key: PyJWK, alg: str) -> dict[str, Any]:
        """Claims of a token whose signature already verified, for wording a refusal."""
        try:
            return jwt.decode(token, key.key, algorithms=[alg],
                              options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                                       "verify_aud": False, "verify_iss": False})
        except jwt.PyJWTError:
            return {}

    def _identity(self, claims: dict[str, Any]) -> VerifiedIdentity:
        tenant = self.tenant or claims[self.tenant_claim]
        if not isinstance(tenant, str) or not tenant:
            raise TokenRefused(f"token's {self.tenant_claim!r} claim is not a tenant name")
        name = claims.get(self.username_claim)
        if not isinstance(name, str) or not name.strip():
            raise TokenRefused(f"token has no {self.username_claim!r} claim naming the person")
        groups = claims.get(self.groups_claim, [])
        if isinstance(groups, str):
            groups = [groups]
        if not isinstance(groups, list) or not all(isinstance(group, str) for group in groups):
            raise TokenRefused(f"token's {self.groups_claim!r} claim is not a list of group names")
        email = claims.get("email")
        return VerifiedIdentity(
            subject=name.strip(),
            tenant=tenant,
            groups=tuple(groups),
            email=email if isinstance(email, str) else None,
            issuer=self.issuer,
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
            email_verified=claims.get("email_verified") is True,
        )

    async def _signing_key(self, kid: str) -> PyJWK:
        key = self._keys.get(kid)
        if key is not None and not self._stale():
            return key
        async with self._lock:
            key = self._keys.get(kid)
            if key is None or self._stale():
                if self._may_fetch():
                    await self._refresh()
                key = self._keys.get(kid)
        if key is not None:
            return key
        if not self._keys and self._failure:
            raise TokenRefused(f"cannot check the token: {self._failure}", UNREACHABLE_REMEDY)
        raise TokenRefused(f"token was signed with key {kid[:64]!r}, which {self.issuer} does not publish")

    def _stale(self) -> bool:
        return self._fetched_at is not None and self._clock() - self._fetched_at > MAX_JWKS_AGE_S

    def _may_fetch(self) -> bool:
        now = self._clock()
        if self._failed_at is not None and now - self._failed_at < RETRY_AFTER_FAILURE_S:
            return False
        return self._fetched_at is None or self._stale() or now - self._fetched_at >= self.refetch_interval_s

    async def _refresh(self) -> None:
        """Fetch discovery (once) and the JWKS; on failure keep the keys already known."""
        try:
            if self._jwks_uri is None:
                self._jwks_uri = await self._discover()
            self._keys = await self._fetch_keys(self._jwks_uri)
        except ProviderUnavailable as exc:
            self._failed_at = self._clock()
            self._failure = str(exc)
            log.warning("identity provider %s: %s", self.issuer, exc)
            return
        self._fetched_at = self._clock()
        self._failed_at = None
        self._failure = ""
        log.info("fetched %d signing key(s) from %s", len(self._keys), self._jwks_uri)

    async def _get_json(self, url: str, what: str) -> Any:
        # A provider that refuses connections may be restarting (the dev issuer with its identity replica, a
        # provider's pod): ask again for a few seconds before the token is refused as uncheckable.
        deadline = asyncio.get_running_loop().time() + CONNECT_RETRY_S
        while True:
            try:
                response = await self._client.get(url)
                break
            except httpx.ConnectError as exc:
                if asyncio.get_running_loop().time() > deadline:
                    raise ProviderUnavailable(f"{what} at {url} did not answer ({type(exc).__name__})") from None
                await asyncio.sleep(0.25)
            except httpx.HTTPError as exc:
                raise ProviderUnavailable(f"{what} at {url} did not answer ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise ProviderUnavailable(f"{what} at {url} answered HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise ProviderUnavailable(f"{what} at {url} is not JSON") from None

    async def discovery(self) -> dict[str, Any]:
        """The issuer's discovery document (fetched once), naming this issuer; ProviderUnavailable otherwise."""
        if self._discovery is not None:
            return self._discovery
        url = f"{self.issuer}/.well-known/openid-configuration"
        document = await self._get_json(url, "the OIDC discovery document")
        if not isinstance(document, dict):
            raise ProviderUnavailable(f"the OIDC discovery document at {url} is not a JSON object")
        named = str(document.get("issuer", "")).rstrip("/")
        if named != self.issuer:
            raise ProviderUnavailable(
                f"the provider at {url} names itself {named!r}; set CADUCEUS_OIDC_ISSUER_URL to exactly its issuer"
            )
        self._discovery = document
        return document

    async def _discover(self) -> str:
        document = await self.discovery()
        url = f"{self.issuer}/.well-known/openid-configuration"
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise ProviderUnavailable(f"the OIDC discovery document at {url} has no usable jwks_uri")
        return jwks_uri

    async def _fetch_keys(self, url: str) -> dict[str, PyJWK]:
        document = await self._get_json(url, "the JWKS")
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise ProviderUnavailable(f"the JWKS at {url} has no `keys` list")
        keys: dict[str, PyJWK] = {}
        for entry in entries:
            # Only signing keys of an allowed asymmetric algorithm, each with a kid.
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or entry.get("kty") == "oct":
                continue
            kid = entry.get("kid")
            if not isinstance(kid, str) or not kid:
                continue
            try:
                key = PyJWK(entry)
            except jwt.PyJWTError:
                continue
            if key.algorithm_name in ALLOWED_ALGORITHMS:
                keys[kid] = key
        if not keys:
            raise ProviderUnavailable(f"the JWKS at {url} has no usable signing key")
        return keys


def unverified_header(token: str) -> dict[str, Any]:
    """The header of something that looks like a JWT; TokenRefused when it is missing, oversized or malformed."""
    if not isinstance(token, str) or not token.strip():
        raise TokenRefused("no token was sent with the message")
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenRefused(f"token is {len(token)} characters long, more than the {MAX_TOKEN_BYTES} accepted")
    malformed = TokenRefused("token is not a well-formed JWT (expected header.payload.signature)")
    if not _COMPACT_JWS.match(token):
        raise malformed
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise malformed from None
    return header


def unverified_issuer(token: str) -> str:
    """The `iss` a token names (not yet trusted: it only chooses which issuer's keys check it)."""
    unverified_header(token)
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise TokenRefused("token is not a well-formed JWT (its payload cannot be decoded)") from None
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or not issuer:
        raise TokenRefused("token names no issuer ('iss' claim)")
    return issuer.rstrip("/")


def _later_than_now(timestamp: Any, leeway_s: float) -> bool:
    try:
        return float(timestamp) > time.time() + leeway_s
    except (TypeError, ValueError):
        return False
