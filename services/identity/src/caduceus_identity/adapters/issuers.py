"""Which provider vouches for a token: the deployment's issuer, or one the token's tenant trusts.

The deployment's issuer (CADUCEUS_OIDC_ISSUER_URL; the dev issuer in the embedded stack) serves
every tenant and names the tenant in a claim. A tenant's own issuers (tenants.yaml `issuers:`)
vouch only for that tenant: whatever their tokens claim, the tenant is the one that lists them.
Keys are only ever fetched from configured issuers, never from an issuer a token merely names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from caduceus_directory import Directory, Issuer
from caduceus_oidc import OidcVerifier, TokenRefused, VerifiedIdentity, unverified_issuer

UNTRUSTED_REMEDY = ("sign in with your organization's identity provider, or ask an administrator to add this "
                    "provider to the tenant's `issuers:` in tenants.yaml")


@dataclass(frozen=True)
class DeploymentIssuer:
    """The issuer every tenant trusts; its tokens name their tenant in `tenant_claim`."""

    url: str
    audience: str = "caduceus"
    tenant_claim: str = "tenant"
    username_claim: str = "sub"
    groups_claim: str = "groups"


@dataclass(frozen=True)
class VerifierTiming:
    leeway_s: float = 30.0
    refetch_interval_s: float = 30.0
    timeout_s: float = 5.0


class IssuerRegistry:
    """Verifies a token with the right issuer's keys and claims; one verifier (and JWKS cache) per issuer."""

    def __init__(self, directory: Callable[[], Directory], deployment: DeploymentIssuer | None,
                 timing: VerifierTiming = VerifierTiming()) -> None:
        self.directory = directory
        self.deployment = deployment
        self.timing = timing
        self._verifiers: dict[tuple, OidcVerifier] = {}

    @property
    def trusted(self) -> list[str]:
        """Every issuer URL some tenant (or the whole deployment) trusts."""
        urls = [self.deployment.url.rstrip("/")] if self.deployment else []
        for tenant in self.directory().tenants.values():
            urls += [issuer.url.rstrip("/") for issuer in tenant.issuers]
        return sorted(set(urls))

    async def verify(self, token: str, tenant: str | None = None, *,
                     audience: str | None = None) -> VerifiedIdentity:
        """The identity a token proves; `tenant` (the message's) picks among tenants that trust the same issuer.

        `audience` replaces the issuer's usual audience (the MCP endpoint's tokens are for another resource).
        """
        issuer = unverified_issuer(token)
        if self.deployment is not None and issuer == self.deployment.url.rstrip("/"):
            return await self._deployment_verifier(audience).verify(token)
        trusting = [(name, entry) for name, config in self.directory().tenants.items()
                    for entry in config.issuers if entry.url.rstrip("/") == issuer]
        if tenant is not None:
            trusting = [(name, entry) for name, entry in trusting if name == tenant]
            if not trusting:
                self.directory().tenant(tenant)  # an unknown tenant is refused as such
                raise TokenRefused(f"token was issued by {issuer[:200]!r}, which tenant {tenant!r} does not trust",
                                   UNTRUSTED_REMEDY)
        if not trusting:
            raise TokenRefused(f"token was issued by {issuer[:200]!r}, which no tenant trusts", UNTRUSTED_REMEDY)
        if len({name for name, _ in trusting}) > 1:
            names = ", ".join(sorted({name for name, _ in trusting}))
            raise TokenRefused(f"token was issued by {issuer!r}, which tenants {names} all trust",
                               "say which tenant you mean (for whoami: --tenant)")
        name, entry = trusting[0]
        return await self._tenant_verifier(name, entry, audience).verify(token)

    def _deployment_verifier(self, audience: str | None = None) -> OidcVerifier:
        assert self.deployment is not None
        d = self.deployment
        aud = audience or d.audience
        return self._verifier(("deployment", d.url, aud, d.tenant_claim, d.username_claim, d.groups_claim),
                              d.url, aud, tenant_claim=d.tenant_claim, username_claim=d.username_claim,
                              groups_claim=d.groups_claim)

    def _tenant_verifier(self, tenant: str, issuer: Issuer, audience: str | None = None) -> OidcVerifier:
        aud = audience or issuer.audience
        key = (tenant, issuer.url, aud, issuer.username_claim, issuer.groups_claim)
        return self._verifier(key, issuer.url, aud, tenant=tenant, username_claim=issuer.username_claim,
                              groups_claim=issuer.groups_claim)

    def _verifier(self, key: tuple, url: str, audience: str, **claims: str) -> OidcVerifier:
        verifier = self._verifiers.get(key)
        if verifier is None:
            verifier = OidcVerifier(url, audience, leeway_s=self.timing.leeway_s,
                                    refetch_interval_s=self.timing.refetch_interval_s,
                                    timeout_s=self.timing.timeout_s, **claims)
            self._verifiers[key] = verifier
        return verifier

    async def close(self) -> None:
        for verifier in self._verifiers.values():
            await verifier.close()
        self._verifiers.clear()
