"""The approval service's settings, read from the environment with the CADUCEUS_ prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from caduceus_bus import BusSettings, with_state_paths


class ApprovalSettings(BusSettings):
    """Bus, Temporal, keys, the tenants file, timings, and the approver web UI with its OIDC provider.

    Paths left unset derive from `state_dir`: `<state_dir>/keys`, `<state_dir>/tenants.yaml`.
    """

    model_config = SettingsConfigDict(env_prefix="CADUCEUS_", extra="ignore")

    state_dir: Path = Field(description="Where approval keeps its state; the paths below default into it.")
    keys_dir: Path = Field(description=(
        "Signing keys: `approval.key` and `approval-desk.key` (made on first start when absent), "
        "`approval-ui.secret` (the UI's session cookies), and the public keys of identity and policy."))
    tenants_file: Path = Field(description="Tenants and their people, for who may approve.")
    temporal_address: str = Field(default="127.0.0.1:7233", description="The Temporal frontend (host:port).")
    temporal_namespace: str = Field(default="default", description="The Temporal namespace of the workflows.")
    approval_task_queue: str = Field(default="caduceus-approvals", description=(
        "The Temporal task queue approval's worker polls."))
    approval_window_s: float = Field(default=900.0, description=(
        "How long people have to answer when the policy's terms name no timeout; no answer is a deny."))
    decision_ttl_s: float = Field(default=60.0, description=(
        "How long the approval's allow/deny stays usable by the broker and the executor."))
    temporal_retry_s: float = Field(default=2.0, description="Pause between attempts to reach Temporal.")
    temporal_rpc_timeout_s: float = Field(default=5.0, description="The bound on one call to Temporal.")
    abandoned_sweep_s: float = Field(default=5.0, gt=0, description=(
        "How often approvals whose workflow ended undecided in Temporal (terminated, timed out) are looked for "
        "and denied."))
    request_wait_s: float = Field(default=3.0, description=(
        "How long an `approve` decision waits for its call's request to arrive on the bus."))
    ui_host: str = Field(default="127.0.0.1", description="The address the approver web UI and API listen on.")
    ui_port: int = Field(default=8902, ge=0, le=65535, description="The approver web UI's port: 0 disables it.")
    ui_public_url: str | None = Field(default=None, description=(
        "The URL people reach the UI at (behind a proxy, in a container); default http://<ui_host>:<ui_port>."))
    ui_session_ttl_s: float = Field(default=8 * 3600, gt=0, description="How long a UI sign-in lasts.")
    ui_drain_s: float = Field(default=8.0, gt=0, le=3600, description=(
        "On SIGTERM, how long the answers in progress in the UI and its API get to reach their approval's "
        "workflow (this process's Temporal worker still running) and be acknowledged to the approver; no new "
        "request is taken meanwhile, and the live inbox streams end at once. An answer gives up on Temporal "
        "after twice `temporal_rpc_timeout_s` anyway. Keep it under the stop grace period (10 s for docker "
        "compose and `caduceus up`, terminationGracePeriodSeconds on Kubernetes)."))
    temporal_ui_url: str | None = Field(default=None, description=(
        "The Temporal Web UI, for links from an approval to its workflow (unset: no link)."))
    oidc_issuer_url: str | None = Field(default=None, description=(
        "The OIDC provider approvers sign in with (the dev issuer in the embedded stack)."))
    oidc_client_id: str = Field(default="caduceus", description="The UI's OIDC client id at that provider.")
    oidc_client_secret: str | None = Field(default=None, repr=False, description=(
        "The UI's OIDC client secret (unset: a public client)."))
    oidc_audience: str | None = Field(default=None, description=(
        "The `aud` of the provider's ID tokens: the client id unless the provider says otherwise."))
    usage_timeout_s: float = Field(default=10.0, gt=0, description=(
        "How long the usage page waits for the audit service to count a tenant's model usage."))
    oidc_scopes: str = Field(default="openid email profile", description="The scopes the UI asks for at sign-in.")

    @model_validator(mode="before")
    @classmethod
    def _derive_paths(cls, data: Any) -> Any:
        return with_state_paths(data, keys_dir="keys", tenants_file="tenants.yaml")

    @property
    def ui_url(self) -> str | None:
        """The UI's base URL, or None when the UI is disabled."""
        if self.ui_port == 0:
            return None
        return (self.ui_public_url or f"http://{self.ui_host}:{self.ui_port}").rstrip("/")

    @property
    def ui_secret_file(self) -> Path:
        """The key that signs the UI's session cookies (made on first start, mode 0600)."""
        return self.keys_dir / "approval-ui.secret"
