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

    nats_url: str = "nats://127.0.0.1:4222"
    nats_user: str | None = None
    nats_password: str | None = None
    # A `.creds` file (JWT and nkey seed) from the bus authority; the embedded stack gives every process its own.
    nats_credentials: Path | None = None
    # The credential itself, held in memory by a worker that took it from its file (see `take_credentials`).
    nats_credentials_text: SecretStr | None = Field(default=None, exclude=True)
    # The inbox this credential may read (replies, JetStream acks); by default the one its `.creds` file names.
    nats_inbox_prefix: str | None = None
    stream_name: str = "CADUCEUS"
    # How long a publisher waits for JetStream to confirm an event is stored.
    publish_timeout_s: float = 5.0
    # Where a service answers /healthz, /readyz and /metrics over HTTP; unset, it serves none (its health is
    # still asked on the bus, `caduceus.health.<service>`). Set the host to 0.0.0.0 in a container.
    http_port: int | None = Field(default=None, ge=0, le=65535)
    http_host: str = "127.0.0.1"
