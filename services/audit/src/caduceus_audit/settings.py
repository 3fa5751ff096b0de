"""The audit service's settings, read from the environment with the CADUCEUS_ prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from caduceus_bus import BusSettings, with_state_paths


class AuditSettings(BusSettings):
    """Bus connection plus where the audit trail is stored, how the stream is consumed, how chains are signed.

    `audit_db_url` (CADUCEUS_AUDIT_DB_URL) is any SQLAlchemy URL; left unset it is
    `sqlite:///<state_dir>/audit.db`. PostgreSQL: `postgresql+psycopg2://user:pass@host/db`.
    Checkpoints are signed with `<keys_dir>/audit.key` (made on first start, `audit.pub` beside it).
    """

    model_config = SettingsConfigDict(env_prefix="CADUCEUS_", extra="ignore")

    state_dir: Path = Field(description="Where audit keeps its state; the paths below default into it.")
    keys_dir: Path = Field(description="Signing keys: checkpoints are signed with `audit.key` (made on first start "
                                       "when absent, `audit.pub` beside it).")
    audit_db_url: str = Field(description=(
        "The audit store, any SQLAlchemy URL; PostgreSQL: `postgresql+psycopg2://user:pass@host/db`."))
    audit_batch_size: int = Field(default=500, ge=1, le=1000, description=(
        "Messages fetched from JetStream and committed in one transaction."))
    audit_fetch_timeout_s: float = Field(default=1.0, gt=0, description=(
        "How long one fetch waits for messages before asking again."))
    audit_ack_wait_s: float = Field(default=30.0, gt=0, description=(
        "A message fetched but not acknowledged within this time is delivered again (after a crash)."))
    audit_retry_max_s: float = Field(default=10.0, gt=0, description=(
        "Longest pause between attempts while the database is unavailable."))
    audit_checkpoint_every: int = Field(default=1000, ge=1, le=10_000, description=(
        "A tenant's chain is checkpointed after this many new records, or after `audit_checkpoint_interval_s`, "
        "whichever comes first."))
    audit_checkpoint_interval_s: float = Field(default=60.0, gt=0, description=(
        "How long after its first record since the last checkpoint a tenant's chain is checkpointed at the latest."))

    audit_stall_after_s: float = Field(default=120.0, gt=0, description=(
        "When the stream holds events audit has not stored and nothing is acknowledged for this long while the "
        "database answers, audit restarts its consumer, says so in its log and in an audited error event."))

    @model_validator(mode="before")
    @classmethod
    def _derive_db_url(cls, data: Any) -> Any:
        data = with_state_paths(data, keys_dir="keys")
        if isinstance(data, dict) and not data.get("audit_db_url"):
            data["audit_db_url"] = f"sqlite:///{data['state_dir'] / 'audit.db'}"
        return data
