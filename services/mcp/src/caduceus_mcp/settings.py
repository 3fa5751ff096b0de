"""The MCP gateway's settings, read from the environment with the CADUCEUS_ prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from caduceus_bus import BusSettings, with_state_paths


class McpSettings(BusSettings):
    """Bus connection plus where the gateway finds its registry, pins, upstream credentials and keys.

    Paths left unset derive from `state_dir`: `<state_dir>/mcp.yaml`, `<state_dir>/mcp-secrets`,
    `<state_dir>/keys`, and the pins in `<state_dir>/mcp-pins.db` (SQLite) unless `pins_db_url` names a database.
    """

    model_config = SettingsConfigDict(env_prefix="CADUCEUS_", extra="ignore")

    state_dir: Path = Field(description="Where the gateway keeps its state; the paths below default into it.")
    keys_dir: Path = Field(description="Public keys: `identity.pub` (grants), `policy.pub` and `approval.pub` "
                                       "(decisions the gateway verifies before calling an upstream).")
    registry_file: Path = Field(description=(
        "The MCP registry (YAML): per tenant, the upstream servers, their scope, approvers and credential "
        "references. Edited with `caduceus mcp servers ...`; reloaded when it changes."))
    secrets_dir: Path = Field(description=(
        "The upstream credentials: `<secrets_dir>/<tenant>/<name>`, one file per secret (mode 0600). Only the "
        "gateway reads them."))
    pins_db_url: str = Field(default="", description=(
        "Where pinned tool definitions are kept: an SQLAlchemy URL (PostgreSQL in production); empty, "
        "`sqlite:///<state_dir>/mcp-pins.db`."))
    call_timeout_s: float = Field(default=30.0, gt=0, description=(
        "An upstream call not answered within this bound returns an error result to the agent."))
    list_timeout_s: float = Field(default=10.0, gt=0, description=(
        "How long the gateway waits for an upstream to start and list its tools."))
    policy_timeout_s: float = Field(default=3.0, gt=0, description=(
        "How long the gateway waits for policy to say which tools a person could ever use; without an answer "
        "a planner is offered no MCP tool."))
    max_result_bytes: int = Field(default=100_000, ge=1000, description=(
        "A result longer than this is cut to it (and says so); a server may set a lower bound."))
    reload_interval_s: float = Field(default=1.0, gt=0, description=(
        "How often the gateway checks the registry file for changes."))
    listing_refresh_s: float = Field(default=5.0, gt=0, description=(
        "How often the gateway lists the tools of every registered server in use (asked for in the last 10 "
        "minutes) again: planners' tool lists and policy's facts are answered from a listing about this recent. "
        "A call is always checked against the definition the server "
        "serves at that moment."))
    session_idle_s: float = Field(default=300.0, gt=0, description=(
        "How long a stdio server's session stays open with no call or listing in it. Sessions are kept between "
        "calls, one per tenant, workspace and server (starting a sandboxed server takes seconds, a call on a live "
        "session milliseconds); a changed registration, sandbox or credential, or a failed call, starts a new "
        "one."))
    sandbox_file: Path | None = Field(default=None, description=(
        "The tenants' sandbox policy (the broker's `sandbox.yaml`): stdio servers run under bubblewrap with a "
        "profile made from it. Unset, `<state_dir>/sandbox.yaml` when it exists."))
    sandbox_stdio: bool = Field(default=True, description=(
        "Run stdio servers inside bubblewrap. Off only where bubblewrap cannot run (a test without user "
        "namespaces); a stdio server then runs as a plain child of the gateway."))
    endpoint_port: int | None = Field(default=None, ge=0, le=65535, description=(
        "Where the MCP endpoint for other MCP clients (streamable HTTP) listens; unset, it is not served."))
    endpoint_host: str = Field(default="127.0.0.1", description="The address the MCP endpoint listens on.")
    endpoint_public_url: str | None = Field(default=None, description=(
        "The URL clients reach the MCP endpoint by (behind a proxy: its https URL); the base of every resource "
        "URL in the OAuth protected-resource metadata. Unset: http://<endpoint_host>:<endpoint_port>."))
    tenants_file: Path = Field(description=(
        "The tenants file identity reads: the MCP endpoint names each tenant's OIDC issuer from it."))
    oidc_issuer_url: str | None = Field(default=None, description=(
        "The deployment-wide OIDC issuer, named in the endpoint's metadata for tenants without their own "
        "`issuers:` (the same value identity trusts)."))
    endpoint_decision_timeout_s: float = Field(default=10.0, gt=0, description=(
        "A call through the MCP endpoint that policy does not decide within this bound is denied; nothing runs."))
    endpoint_approval_wait_s: float = Field(default=25.0, gt=0, description=(
        "How long a call through the MCP endpoint waits for approvers before it answers \"waiting for approval\" "
        "(the client calls again to keep waiting; the approval is not asked twice)."))
    endpoint_drain_s: float = Field(default=8.0, gt=0, le=3600, description=(
        "On SIGTERM, how long the requests in progress at the MCP endpoint (tool calls waiting for their decision "
        "and outcome, which still arrive over the bus) get to finish before they are cut; no new request is taken "
        "meanwhile. A call can take longer (up to `endpoint_decision_timeout_s` plus `call_timeout_s` and 15 s, "
        "or `endpoint_approval_wait_s` waiting for approvers): one still waiting 1.5 s before the bound is "
        "answered \"call the tool again\" (the call goes on; another replica takes it up). Keep it under the "
        "stop grace period (10 s for docker compose and `caduceus up`, terminationGracePeriodSeconds on "
        "Kubernetes)."))

    @model_validator(mode="before")
    @classmethod
    def _derive_paths(cls, data: Any) -> Any:
        return with_state_paths(data, keys_dir="keys", registry_file="mcp.yaml", secrets_dir="mcp-secrets",
                                tenants_file="tenants.yaml")

    @property
    def endpoint_url(self) -> str:
        """The base URL of the MCP endpoint as clients reach it."""
        return (self.endpoint_public_url or f"http://{self.endpoint_host}:{self.endpoint_port}").rstrip("/")

    @property
    def pins_url(self) -> str:
        """The pins database's URL (the setting, or SQLite in the state dir)."""
        return self.pins_db_url or f"sqlite:///{self.state_dir / 'mcp-pins.db'}"
