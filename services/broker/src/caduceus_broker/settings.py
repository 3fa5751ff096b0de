"""Broker and worker settings, from the environment with the CADUCEUS_ prefix."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from caduceus_bus import BusSettings, default_state_dir

DEFAULT_TOOLSETS = ["terminal", "file", "todo", "memory"]


class ModelSettings(BaseSettings):
    """The model endpoint planners use: the scripted model in the embedded stack, or a real one."""

    model_config = SettingsConfigDict(env_prefix="CADUCEUS_MODEL_", extra="ignore")

    base_url: str = "http://127.0.0.1:8901/v1"
    api_key: str = Field(default="scripted", repr=False)
    name: str = "scripted"


class BrokerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CADUCEUS_", extra="ignore")

    state_dir: Path = Field(default_factory=default_state_dir)
    keys_dir: Path | None = None
    workspaces_dir: Path | None = None
    workers_dir: Path | None = None
    toolsets: list[str] = DEFAULT_TOOLSETS
    worker_start_timeout_s: float = 90.0
    decision_timeout_s: float = 5.0
    completion_timeout_s: float = 300.0
    max_iterations: int = 20
    # Sandboxes: the default policy file, per-tenant/workspace files (<dir>/<tenant>.yaml,
    # <dir>/<tenant>/<workspace>.yaml), and the unprivileged user a sandbox runs as when the broker is root.
    sandbox_policy: Path | None = None
    sandbox_policies_dir: Path | None = None
    sandbox_uid: int = 65534
    sandbox_gid: int = 65534
    # Worker lifecycle: a pair idle this long is stopped; a tenant runs at most this many pairs.
    idle_timeout_s: float = Field(default=900.0, gt=0)
    max_workers_per_tenant: int = Field(default=8, ge=1)

    @property
    def sandbox_policy_file(self) -> Path:
        return self.sandbox_policy or self.state_dir / "sandbox.yaml"

    @property
    def sandbox_policies(self) -> Path:
        return self.sandbox_policies_dir or self.state_dir / "sandboxes"
    # The scoped signing keys the broker mints each worker's bus credential with (the embedded stack sets it).
    nats_worker_signing: Path | None = None

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

    tenant: str
    workspace: str
    worker_id: str
    worker_role: str
    keys_dir: Path
    workspace_dir: Path | None = None
    toolsets: list[str] = DEFAULT_TOOLSETS
    decision_timeout_s: float = 5.0
    completion_timeout_s: float = 300.0
    max_iterations: int = 20
    # The executor's secrets arrive on this inherited pipe (never in the environment or on the bus).
    secrets_fd: int | None = None


def bus_settings() -> BusSettings:
    return BusSettings()
