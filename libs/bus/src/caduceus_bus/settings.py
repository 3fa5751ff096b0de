"""Bus connection settings, read from the environment with the CADUCEUS_ prefix."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class BusSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CADUCEUS_", extra="ignore")

    nats_url: str = "nats://127.0.0.1:4222"
    nats_user: str | None = None
    nats_password: str | None = None
    stream_name: str = "CADUCEUS"
    # How long a publisher waits for JetStream to confirm an event is stored.
    publish_timeout_s: float = 5.0
