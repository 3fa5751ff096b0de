"""The approval service's settings, read from the environment with the CADUCEUS_ prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import model_validator
from pydantic_settings import SettingsConfigDict

from caduceus_bus import BusSettings, with_state_paths


class ApprovalSettings(BusSettings):
    """Bus connection, Temporal, keys and timing. `keys_dir` left unset is `<state_dir>/keys`."""

    model_config = SettingsConfigDict(env_prefix="CADUCEUS_", extra="ignore")

    state_dir: Path
    keys_dir: Path
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    approval_task_queue: str = "caduceus-approvals"
    # How long a person has to answer; no answer is a deny.
    approval_window_s: float = 900.0
    # How long the approval's allow/deny stays usable by the broker and the executor.
    decision_ttl_s: float = 60.0
    # Pause between attempts to reach Temporal, and the bound on one call to it.
    temporal_retry_s: float = 2.0
    temporal_rpc_timeout_s: float = 5.0

    @model_validator(mode="before")
    @classmethod
    def _derive_paths(cls, data: Any) -> Any:
        return with_state_paths(data, keys_dir="keys")
