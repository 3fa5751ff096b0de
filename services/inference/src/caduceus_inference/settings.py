"""The inference gateway's settings, read from the environment with the CADUCEUS_ prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import SettingsConfigDict

from caduceus_bus import BusSettings, with_state_paths


class Upstream(BaseModel):
    """One model provider the gateway may call: the pack's routes name it; its credential stays here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(description="Its OpenAI-compatible base URL, e.g. https://api.example.com/v1.")
    api_key: str = Field(default="", repr=False, description="Its API key (only this service holds it).")
    model: str = Field(default="", description="The model name sent to it (empty: the name the planner asked for).")
    usd_per_1k_prompt: float = Field(default=0.0, ge=0, description="Its price per 1000 prompt tokens, for budgets.")
    usd_per_1k_completion: float = Field(default=0.0, ge=0, description="Its price per 1000 completion tokens.")


class InferenceSettings(BusSettings):
    """Bus, keys, the HTTP endpoint planners call, the upstreams, and the time bounds."""

    model_config = SettingsConfigDict(env_prefix="CADUCEUS_", extra="ignore")

    state_dir: Path = Field(description="Where the gateway keeps its state; `keys_dir` defaults into it.")
    keys_dir: Path = Field(description=(
        "The public keys of identity (session grants, the planners' API keys) and policy (model decisions)."))
    inference_host: str = Field(default="127.0.0.1", description=(
        "The address the OpenAI-compatible endpoint listens on: 0.0.0.0 in a container."))
    inference_port: int = Field(default=8905, ge=0, le=65535, description=(
        "The port of the OpenAI-compatible endpoint planners call (`/v1/chat/completions`)."))
    inference_upstreams: dict[str, Upstream] = Field(default_factory=lambda: {
        "default": Upstream(base_url="http://127.0.0.1:8901/v1", api_key="scripted")}, description=(
        "The upstreams by the names the policy pack's `models:` routes use, as JSON: "
        '`{"default": {"base_url": "http://127.0.0.1:8901/v1", "api_key": "...", "model": "..."}}`.'))
    inference_decision_timeout_s: float = Field(default=5.0, gt=0, description=(
        "How long a call waits for policy's decision before it is refused (fail closed)."))
    inference_upstream_timeout_s: float = Field(default=120.0, gt=0, description=(
        "The bound on one upstream call (connect and read); past it the call fails with 502."))

    inference_drain_s: float = Field(default=8.0, gt=0, le=3600, description=(
        "On SIGTERM, how long model calls in progress (streams too) get to finish before they are cut; no new one "
        "is taken meanwhile. Keep it under the stop grace period (10 s for docker compose and `caduceus up`, "
        "terminationGracePeriodSeconds on Kubernetes)."))
    inference_stream_holdback_chars: int = Field(default=128, ge=1, le=65536, description=(
        "When the pack sets response rules, how many characters of a streamed answer are held back until the "
        "text after them shows they do not start a secret or a denied word (a match in progress is held until "
        "it ends). Larger catches longer patterns split across chunks; the first words arrive that much later."))

    @model_validator(mode="before")
    @classmethod
    def _derive_paths(cls, data: Any) -> Any:
        return with_state_paths(data, keys_dir="keys")
