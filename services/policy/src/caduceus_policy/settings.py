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

    state_dir: Path = Field(description="Where policy keeps its state; the paths below default into it.")
    keys_dir: Path = Field(description="Signing keys: policy signs decisions with `policy.key` (made on first start "
                                       "when absent) and verifies grants with `identity.pub`.")
    policy_file: Path = Field(description=(
        "A pack: a YAML or Cedar file, or a directory of them. It seeds the bus when no pack is published yet."))
    workspaces_dir: Path = Field(description="The workspaces, for facts about paths in tool arguments.")
    decision_ttl_s: float = Field(default=60.0, description=(
        "How long a decision stays usable by the broker and the executor."))
    decide_timeout_ms: float = Field(default=500.0, description=(
        "A call the engine has not decided within this bound is denied."))
    decide_concurrency: int = Field(default=16, ge=1, le=256, description=(
        "Requests one replica decides at once (while one waits on the bus for its counters or its decision's ack, "
        "the next is evaluated)."))
    follow_symlinks: bool = Field(default=True, description=(
        "Follow symlinks in the workspaces on this host (they must be mounted here for that)."))
    packs_from_bus: bool = Field(default=True, description=(
        "Take packs published to JetStream KV (`caduceus policy publish`) and hot-reload them."))
    packs_bucket: str = Field(default="caduceus_policy_packs", description=(
        "The JetStream KV bucket of published packs, shared by every replica of one deployment."))
    limits_bucket: str = Field(default="caduceus_policy_limits", description=(
        "The JetStream KV bucket of rate-limit and budget counters, shared by every replica."))
    turns_bucket: str = Field(default="caduceus_policy_turns", description=(
        "The JetStream KV bucket of per-turn guardrail records (calls, tokens, repeated calls of each turn), "
        "shared by every replica; records expire after a day."))
    mcp_facts_timeout_s: float = Field(default=10.0, gt=0, description=(
        "How long policy waits for the MCP gateway's facts about an `mcp__` tool (server, annotations, pin "
        "state); without them the call is denied (fail closed). As long as the gateway may take to start a "
        "server and list its tools (its `list_timeout_s`): a stdio server starts in a sandbox per session."))
    usage_consumer: str = Field(default="policy-usage", description=(
        "The durable JetStream consumer through which the replicas share model usage (for budgets)."))

    @model_validator(mode="before")
    @classmethod
    def _derive_paths(cls, data: Any) -> Any:
        return with_state_paths(data, keys_dir="keys", policy_file="policy.yaml", workspaces_dir="workspaces")
