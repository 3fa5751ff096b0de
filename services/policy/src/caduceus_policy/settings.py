"""The policy service's settings, read from the environment with the CADUCEUS_ prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from caduceus_bus import BusSettings, with_state_paths


class PolicySettings(BusSettings):
    """Bus connection plus where policy finds its pack, keys and workspaces, and how it decides.

    Paths left unset derive from `state_dir`: `<state_dir>/keys`, `<state_dir>/policy.yaml`,
    `<state_dir>/workspaces` (the layout the embedded stack and the broker use).
    """

    model_config = SettingsConfigDict(env_prefix="CADUCEUS_", extra="ignore")

    state_dir: Path
    keys_dir: Path
    # A pack: a YAML or Cedar file, or a directory of them. It seeds the bus when no pack is published yet.
    policy_file: Path
    workspaces_dir: Path
    # How long a decision stays usable by the broker and the executor.
    decision_ttl_s: float = 60.0
    # A call the engine has not decided within this bound is denied.
    decide_timeout_ms: float = 500.0
    # Requests one replica decides at once (while one waits on the bus for its counters or its decision's ack,
    # the next is evaluated).
    decide_concurrency: int = Field(default=16, ge=1, le=256)
    # Follow symlinks in the workspaces on this host (they must be mounted here for that).
    follow_symlinks: bool = True
    # Take packs published to JetStream KV (`caduceus policy publish`) and hot-reload them.
    packs_from_bus: bool = True
    # JetStream KV buckets and the usage consumer every replica of one deployment shares.
    packs_bucket: str = "caduceus_policy_packs"
    limits_bucket: str = "caduceus_policy_limits"
    usage_consumer: str = "policy-usage"

    @model_validator(mode="before")
    @classmethod
    def _derive_paths(cls, data: Any) -> Any:
        return with_state_paths(data, keys_dir="keys", policy_file="policy.yaml", workspaces_dir="workspaces")
