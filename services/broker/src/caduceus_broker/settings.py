"""Broker and worker settings, from the environment with the CADUCEUS_ prefix."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from caduceus_bus import BusSettings, default_state_dir

DEFAULT_TOOLSETS = ["terminal", "file", "todo", "memory"]


class ModelSettings(BaseSettings):
    """The model endpoint planners use: the inference gateway (which holds the upstreams' credentials)."""

    model_config = SettingsConfigDict(env_prefix="CADUCEUS_MODEL_", extra="ignore")

    base_url: str = Field(default="http://127.0.0.1:8905/v1", description=(
        "The OpenAI-compatible endpoint planners call: the inference gateway (the planner's sandbox reaches only "
        "this; each turn's session grant is its API key)."))
    api_key: str = Field(default="", repr=False, description=(
        "Unused by planners since the inference gateway (they send their session grant); kept so older "
        "environments still parse."))
    name: str = Field(default="scripted", description="The model name planners ask for.")


class BrokerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CADUCEUS_", extra="ignore")

    state_dir: Path = Field(default_factory=default_state_dir, description=(
        "Where the broker keeps its state: keys, workspaces, workers, sandbox policies default into it."))
    keys_dir: Path | None = Field(default=None, description=(
        "Public keys of identity, policy and approval, to verify decisions (unset: `<state_dir>/keys`); "
        "each sandbox gets the `*.pub` files only."))
    workspaces_dir: Path | None = Field(default=None, description=(
        "The tenants' workspaces (unset: `<state_dir>/workspaces`)."))
    workers_dir: Path | None = Field(default=None, description=(
        "The planners' and executors' homes and logs (unset: `<state_dir>/workers`)."))
    toolsets: list[str] = Field(default=DEFAULT_TOOLSETS, description="The Hermes toolsets workers enable.")
    worker_start_timeout_s: float = Field(default=90.0, description=(
        "How long a planner or executor may take to start before the turn is refused."))
    decision_timeout_s: float = Field(default=5.0, description=(
        "A decision arriving later than this after its call was requested is never dispatched (the call is "
        "denied); workers get the same bound."))
    completion_timeout_s: float = Field(default=300.0, description=(
        "How long a planner waits for a dispatched call's result."))
    max_iterations: int = Field(default=20, description="The most model turns a planner takes for one chat turn.")
    sandbox_policy: Path | None = Field(default=None, description=(
        "The default sandbox policy file (unset: `<state_dir>/sandbox.yaml`, copied from the shipped default)."))
    sandbox_policies_dir: Path | None = Field(default=None, description=(
        "Per-tenant/workspace sandbox policies, `<dir>/<tenant>.yaml` and `<dir>/<tenant>/<workspace>.yaml` "
        "(unset: `<state_dir>/sandboxes`)."))
    sandbox_uid: int = Field(default=65534, description=(
        "The unprivileged user a sandbox runs as when the broker runs as root."))
    sandbox_gid: int = Field(default=65534, description=(
        "The group a sandbox runs as when the broker runs as root."))
    idle_timeout_s: float = Field(default=900.0, gt=0, description=(
        "A planner/executor pair idle this long is stopped."))
    max_workers_per_tenant: int = Field(default=8, ge=1, description=(
        "A tenant runs at most this many pairs; a turn beyond it is refused."))
    used_decisions_replicas: int = Field(default=1, ge=1, le=5, description=(
        "Replicas of the JetStream bucket of used decisions (`caduceus_used_decisions`), set when the broker "
        "creates it: 3 on a 3-node NATS cluster."))
    lease_ttl_s: float = Field(default=10.0, ge=1.0, le=300.0, description=(
        "How long a broker replica's lease on a tenant/workspace lasts unrenewed (the max age of the KV bucket "
        "`caduceus_broker_leases`, set when the first broker creates it): the owner renews it every quarter of "
        "this, and when the owner dies another replica takes the workspace over about this long later."))
    nats_worker_signing: Path | None = Field(default=None, description=(
        "The scoped signing keys the broker mints each worker's bus credential with (`worker-signing.json` from "
        "`caduceus bus authority`; the embedded stack sets it)."))

    @property
    def sandbox_policy_file(self) -> Path:
        return self.sandbox_policy or self.state_dir / "sandbox.yaml"

    @property
    def sandbox_policies(self) -> Path:
        return self.sandbox_policies_dir or self.state_dir / "sandboxes"

    @property
    def keys(self) -> Path:
        return self.keys_dir or self.state_dir / "keys"

    @property
    def workspaces(self) -> Path:
        return self.workspaces_dir or self.state_dir / "workspaces"

    @property
    def workers(self) -> Path:
        return self.workers_dir or self.state_dir / "workers"


class WorkerSettings(BaseSettings):
    """What the broker hands one planner or executor process."""

    model_config = SettingsConfigDict(env_prefix="CADUCEUS_", extra="ignore")

    tenant: str = Field(description="The worker's tenant.")
    workspace: str = Field(description="The worker's workspace.")
    worker_id: str = Field(description="This planner/executor pair's id.")
    worker_role: str = Field(description="`planner` or `executor`.")
    keys_dir: Path = Field(description="The public keys the worker verifies decisions and grants with.")
    workspace_dir: Path | None = Field(default=None, description="The workspace (the executor's only).")
    toolsets: list[str] = Field(default=DEFAULT_TOOLSETS, description="The Hermes toolsets enabled.")
    decision_timeout_s: float = Field(default=5.0, description="How long the planner waits for a decision.")
    completion_timeout_s: float = Field(default=300.0, description="How long the planner waits for a call's result.")
    max_iterations: int = Field(default=20, description="The most model turns for one chat turn.")
    secrets_fd: int | None = Field(default=None, description=(
        "The inherited pipe the executor's secrets arrive on (never in the environment or on the bus)."))


def bus_settings() -> BusSettings:
    return BusSettings()
