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

    state_dir: Path
    keys_dir: Path
    tenants_file: Path
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    approval_task_queue: str = "caduceus-approvals"
    # How long people have to answer when the policy's terms name no timeout; no answer is a deny.
    approval_window_s: float = 900.0
    # How long the approval's allow/deny stays usable by the broker and the executor.
    decision_ttl_s: float = 60.0
    # Pause between attempts to reach Temporal, and the bound on one call to it.
    temporal_retry_s: float = 2.0
    temporal_rpc_timeout_s: float = 5.0
    # How often approvals whose workflow ended undecided in Temporal (terminated, timed out) are looked for.
    abandoned_sweep_s: float = Field(default=5.0, gt=0)
    # How long an `approve` decision waits for its call's request to arrive on the bus.
    request_wait_s: float = 3.0

    # The approver web UI and API: 0 disables it.
    ui_host: str = "127.0.0.1"
    ui_port: int = Field(default=8902, ge=0, le=65535)
    # The URL people reach the UI at (behind a proxy, in a container); default http://<ui_host>:<ui_port>.
    ui_public_url: str | None = None
    ui_session_ttl_s: float = Field(default=8 * 3600, gt=0)
    # The Temporal Web UI, for links from an approval to its workflow (unset: no link).
    temporal_ui_url: str | None = None
    # The OIDC provider people sign in with (the dev issuer in the embedded stack), and this UI's client.
    oidc_issuer_url: str | None = None
    oidc_client_id: str = "caduceus"
    oidc_client_secret: str | None = Field(default=None, repr=False)
    # The `aud` of the provider's ID tokens: the client id unless the provider says otherwise.
    oidc_audience: str | None = None
    oidc_scopes: str = "openid email profile"

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
