"""The gateway's settings, read from the environment with the CADUCEUS_ prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from caduceus_bus import BusSettings, with_state_paths


class GatewaySettings(BusSettings):
    """Bus, the conversation store, the web chat and the OIDC provider people sign in to it with.

    Paths left unset derive from `state_dir`: `<state_dir>/keys`, `<state_dir>/tenants.yaml`,
    `<state_dir>/gateway.db`.
    """

    model_config = SettingsConfigDict(env_prefix="CADUCEUS_", extra="ignore")

    state_dir: Path = Field(description="Where the gateway keeps its state; the paths below default into it.")
    keys_dir: Path = Field(description="Keys: `gateway-web.secret` signs the web chat's cookies (made on first start).")
    tenants_file: Path = Field(description="Tenants and their workspaces, for the web chat's workspace picker.")
    gateway_db: Path = Field(description="Conversations and their messages (SQLite, schema migrated at start).")
    gateway_db_url: str | None = Field(default=None, description=(
        "A PostgreSQL URL (`postgresql+psycopg2://user:pass@host/db`) for the conversations instead of "
        "`gateway_db`, so gateway replicas share them (a person sees theirs whichever replica serves the page)."))
    turn_timeout_s: float = Field(default=300.0, gt=0, description=(
        "How long a turn may take (approvals included) before the person is told no reply came."))
    gateway_drain_s: float = Field(default=8.0, gt=0, le=3600, description=(
        "On SIGTERM, how long the turns in progress (web chat and Slack) get for their replies to arrive and reach "
        "their people; no new turn is taken meanwhile, and the process exits as soon as they are answered. Most "
        "turns answer within seconds, but one waiting for an approver may take the whole `turn_timeout_s`, far "
        "longer than a stop may: such a turn's person is told the reply was cut off. Keep it under the stop grace "
        "period (10 s for docker compose and `caduceus up`, terminationGracePeriodSeconds on Kubernetes)."))
    web_host: str = Field(default="127.0.0.1", description="The address the web chat listens on.")
    web_port: int = Field(default=8903, ge=0, le=65535, description="The web chat's port: 0 disables it.")
    web_public_url: str | None = Field(default=None, description=(
        "The URL people reach the web chat at (behind a proxy, in a container); default http://<web_host>:<web_port>."))
    web_session_ttl_s: float = Field(default=8 * 3600, gt=0, description=(
        "The longest a web chat sign-in lasts (never longer than the person's ID token)."))
    approvals_url: str | None = Field(default=None, description=(
        "The approval service's API (its UI's URL): signed-in approvers see and answer the calls waiting for them "
        "in the web chat (unset: not shown)."))
    oidc_issuer_url: str | None = Field(default=None, description=(
        "The OIDC provider people sign in to the web chat with (the dev issuer in the embedded stack)."))
    oidc_client_id: str = Field(default="caduceus", description="The web chat's OIDC client id at that provider.")
    oidc_client_secret: str | None = Field(default=None, repr=False, description=(
        "The web chat's OIDC client secret (unset: a public client)."))
    oidc_audience: str | None = Field(default=None, description=(
        "The `aud` of the provider's ID tokens: the client id unless the provider says otherwise."))
    oidc_scopes: str = Field(default="openid email profile", description="The scopes the web chat asks for at sign-in.")
    slack_config: Path = Field(description=(
        "The Slack workspaces to serve (`slack.yaml`, see docs/slack.md); Slack is off while the file is absent."))
    slack_api_url: str = Field(default="https://slack.com/api/", description=(
        "Slack's Web API base URL (a test points it at a local server)."))

    @model_validator(mode="before")
    @classmethod
    def _derive_paths(cls, data: Any) -> Any:
        return with_state_paths(data, keys_dir="keys", tenants_file="tenants.yaml", gateway_db="gateway.db",
                                slack_config="slack.yaml")

    @property
    def web_url(self) -> str | None:
        """The web chat's base URL, or None when it is disabled."""
        if self.web_port == 0:
            return None
        return (self.web_public_url or f"http://{self.web_host}:{self.web_port}").rstrip("/")

    @property
    def web_secret_file(self) -> Path:
        return self.keys_dir / "gateway-web.secret"
