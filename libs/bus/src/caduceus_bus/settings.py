"""Bus connection settings, read from the environment with the CADUCEUS_ prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import platformdirs
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_state_dir() -> Path:
    """Where Caduceus keeps its state when nothing says otherwise: the user's data dir."""
    return Path(platformdirs.user_data_dir("caduceus"))


def with_state_paths(data: Any, **relative: str) -> Any:
    """Settings input with `state_dir` and every unset path setting in `relative` filled in.

    For a `model_validator(mode="before")`: `with_state_paths(data, keys_dir="keys")` makes
    `keys_dir` default to `<state_dir>/keys`, and `state_dir` to the user's data dir.
    """
    if not isinstance(data, dict):
        return data
    state_dir = Path(data.get("state_dir") or default_state_dir())
    return {**data, "state_dir": state_dir,
            **{name: data.get(name) or state_dir / path for name, path in relative.items()}}


class BusSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CADUCEUS_", extra="ignore")

    nats_url: str = Field(default="nats://127.0.0.1:4222", description="The NATS server (or cluster) to connect to.")
    nats_user: str | None = Field(default=None, description="User name, for a bus with plain user/password "
                                                            "authorization instead of credentials.")
    nats_password: str | None = Field(default=None, repr=False, description="Password for `nats_user`.")
    nats_credentials: Path | None = Field(default=None, description=(
        "A `.creds` file (JWT and nkey seed) from the bus authority (`caduceus bus authority`); the embedded stack "
        "gives every process its own."))
    nats_credentials_text: SecretStr | None = Field(default=None, exclude=True, description=(
        "The credential itself, held in memory by a worker that took it from its file (see `take_credentials`)."))
    nats_inbox_prefix: str | None = Field(default=None, description=(
        "The inbox this credential may read (replies, JetStream acks); by default the one its `.creds` file names."))
    stream_name: str = Field(default="CADUCEUS", description="The JetStream stream that keeps every event.")
    publish_timeout_s: float = Field(default=5.0, description=(
        "How long a publisher waits for JetStream to confirm an event is stored."))
    http_port: int | None = Field(default=None, ge=0, le=65535, description=(
        "Where a service serves /healthz, /readyz and Prometheus /metrics over HTTP; unset, it serves none (its "
        "health is still asked on the bus, `caduceus.health.<service>`)."))
    http_host: str = Field(default="127.0.0.1", description=(
        "The address the health and metrics endpoint listens on: 0.0.0.0 in a container."))
    shared_ports: bool = Field(default=False, description=(
        "Let replicas of this service on one machine listen on the same web port (SO_REUSEPORT; the kernel "
        "spreads connections over the live ones). `caduceus up --replicas N` sets it; the health port stays "
        "one per process."))
