"""The identity service's settings, read from the environment with the CADUCEUS_ prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from caduceus_bus import BusSettings, with_state_paths
from caduceus_identity.adapters.issuers import DeploymentIssuer, VerifierTiming

DEV_ISSUER_KEY_FILE = "dev-issuer.pem"


class IdentitySettings(BusSettings):
    """Bus connection, where identity finds tenants and keys, which OIDC issuer it trusts, the dev issuer.

    Paths left unset derive from `state_dir`: `<state_dir>/keys`, `<state_dir>/tenants.yaml`
    (the embedded stack's layout). With no `oidc_issuer_url`, identity trusts its own dev issuer.
    """

    model_config = SettingsConfigDict(env_prefix="CADUCEUS_", extra="ignore")

    state_dir: Path = Field(description="Where identity keeps its state; the paths below default into it.")
    keys_dir: Path = Field(description="Signing keys: identity signs session grants with `identity.key` "
                                       "(made on first start when absent; `identity.pub` beside it).")
    tenants_file: Path = Field(description="Tenants, their users, groups, roles and issuers (`caduceus tenants "
                                           "apply` replaces it; read again on the next message).")
    identity_db: Path = Field(description="Service accounts, platform links and pairing codes (SQLite).")
    identity_db_url: str | None = Field(default=None, description=(
        "A PostgreSQL URL (`postgresql+psycopg2://user:pass@host/db`) for the same records, used instead of "
        "`identity_db` so identity replicas share them."))
    dev_issuer_host: str = Field(default="127.0.0.1", description="The address the dev OIDC issuer listens on.")
    dev_issuer_port: int = Field(default=8900, ge=0, le=65535, description=(
        "The dev OIDC issuer's port: 0 disables it (production uses the organization's provider)."))
    dev_issuer_public_url: str | None = Field(default=None, description=(
        "The URL the dev issuer names itself by (its `iss`) when it binds elsewhere, e.g. 0.0.0.0 in a container."))
    oidc_issuer_url: str | None = Field(default=None, description=(
        "The deployment-wide issuer (every tenant trusts it; its tokens name their tenant in `oidc_tenant_claim`); "
        "unset: the dev issuer. Tenants add their own providers in tenants.yaml (`issuers:`)."))
    oidc_audience: str = Field(default="caduceus", description="The `aud` the deployment-wide issuer's tokens "
                                                               "must carry.")
    mcp_audience: str = Field(default="caduceus-mcp", description=(
        "The `aud` an access token must carry to be used at the MCP endpoint (any issuer the tenant trusts); "
        "a token for the chat audience, or any other, is refused there."))
    oidc_tenant_claim: str = Field(default="tenant", description="The claim naming the tenant in the "
                                                                 "deployment-wide issuer's tokens.")
    oidc_username_claim: str = Field(default="sub", description="The claim naming the person.")
    oidc_groups_claim: str = Field(default="groups", description="The claim listing the person's groups "
                                                                 "(mapped to roles by tenants.yaml).")
    oidc_leeway_s: float = Field(default=30.0, description="Clock skew tolerated on exp/nbf/iat.")
    jwks_refetch_interval_s: float = Field(default=30.0, description=(
        "An unknown key id triggers a JWKS refetch at most this often, so forged kids cannot flood the provider."))
    http_timeout_s: float = Field(default=5.0, description="Bound on each request to an issuer (discovery, JWKS).")
    grant_ttl_s: float = Field(default=600.0, gt=0, description="How long a signed session grant is valid.")

    @model_validator(mode="before")
    @classmethod
    def _derive_paths(cls, data: Any) -> Any:
        return with_state_paths(data, keys_dir="keys", tenants_file="tenants.yaml", identity_db="identity.db")

    @property
    def dev_issuer_url(self) -> str | None:
        """The dev issuer's base URL (also its `iss`), or None when it is disabled."""
        if self.dev_issuer_port == 0:
            return None
        return (self.dev_issuer_public_url or f"http://{self.dev_issuer_host}:{self.dev_issuer_port}").rstrip("/")

    @property
    def trusted_issuer_url(self) -> str | None:
        """The deployment-wide issuer: the configured one, else the dev issuer (None: only tenants' own issuers)."""
        return (self.oidc_issuer_url or self.dev_issuer_url or "").rstrip("/") or None

    def deployment_issuer(self) -> DeploymentIssuer | None:
        url = self.trusted_issuer_url
        if url is None:
            return None
        return DeploymentIssuer(url, self.oidc_audience, self.oidc_tenant_claim, self.oidc_username_claim,
                                self.oidc_groups_claim)

    def verifier_timing(self) -> VerifierTiming:
        return VerifierTiming(self.oidc_leeway_s, self.jwks_refetch_interval_s, self.http_timeout_s)

    @property
    def dev_issuer_key_path(self) -> Path:
        return self.keys_dir / DEV_ISSUER_KEY_FILE
