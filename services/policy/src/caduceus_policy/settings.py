"""The policy service's settings, read from the environment with the CADUCEUS_ prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import model_validator
from pydantic_settings import SettingsConfigDict

from caduceus_bus import BusSettings, with_state_paths


class PolicySettings(BusSettings):
    """Bus connection plus where policy finds its rules, keys and workspaces.

    Paths left unset derive from `state_dir`: `<state_dir>/keys`, `<state_dir>/policy.yaml`,
    `<state_dir>/workspaces` (the layout the embedded stack and the broker use).
    """

    model_config = SettingsConfigDict(env_prefix="CADUCEUS_", extra="ignore")

    state_dir: Path
    keys_dir: Path
    policy_file: Path
    workspaces_dir: Path
    # How long a decision stays usable by the broker and the executor.
    decision_ttl_s: float = 60.0

    @model_validator(mode="before")
    @classmethod
    def _derive_paths(cls, data: Any) -> Any:
        return with_state_paths(data, keys_dir="keys", policy_file="policy.yaml", workspaces_dir="workspaces")
