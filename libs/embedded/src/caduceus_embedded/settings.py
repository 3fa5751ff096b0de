"""Which OpenAI-compatible model the planners talk to: CADUCEUS_MODEL_BASE_URL, _API_KEY, _NAME.

Unset base URL means the embedded stack's scripted model (offline demo). The broker
reads the same settings, so the stack and the broker agree on one endpoint.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

SCRIPTED = "scripted"


class ModelSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CADUCEUS_MODEL_", extra="ignore")

    base_url: str | None = Field(default=None, description=(
        "The OpenAI-compatible endpoint the stack's planners call (unset: the scripted model of the offline demo)."))
    api_key: str = Field(default=SCRIPTED, repr=False, description="The API key sent to it.")
    name: str = Field(default=SCRIPTED, description="The model name asked for.")

    @property
    def is_scripted(self) -> bool:
        """True when no endpoint is configured, so the stack must run its scripted model."""
        return not self.base_url

    def for_stack(self, model_port: int) -> "ModelSettings":
        """These settings with the base URL filled in: the scripted model's when none is configured."""
        if self.base_url:
            return self
        return self.model_copy(update={"base_url": scripted_base_url(model_port)})

    def env(self) -> dict[str, str]:
        """The environment a process needs to reach this model."""
        return {"CADUCEUS_MODEL_BASE_URL": self.base_url or "", "CADUCEUS_MODEL_API_KEY": self.api_key,
                "CADUCEUS_MODEL_NAME": self.name}


def scripted_base_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/v1"
