"""The services the embedded stack runs: a table of specs, and the child processes made from them.

Each service is `python -m <module>` in its own process and session, logging to
logs/<name>.log. The table is data so tests (and other deployments) can run their own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from caduceus_embedded.layout import StateLayout
from caduceus_embedded.ports import StackPorts
from caduceus_embedded.servers import log_tail, spawn
from caduceus_embedded.settings import ModelSettings


@dataclass(frozen=True)
class ServiceSpec:
    """One service of the stack: `python -m module *args` with env on top of the stack's common env.

    A service is ready when it answers the core-NATS request `caduceus.health.<name>` with b"ok",
    or, when ready_url is set, when an HTTP GET of ready_url answers 200. url is what the
    operator is shown for it (the dev issuer, the model endpoint). replica numbers the processes of one
    service from 1; `key` names one of them ("policy", then "policy-2", ...) in logs, stack.json and status.
    """

    name: str
    module: str
    env: Mapping[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    ready_url: str | None = None
    url: str | None = None
    metrics_url: str | None = None
    replica: int = 1

    @property
    def health_subject(self) -> str:
        return f"caduceus.health.{self.name}"

    @property
    def key(self) -> str:
        return self.name if self.replica == 1 else f"{self.name}-{self.replica}"


class ServiceFailed(RuntimeError):
    """A service exited or did not become ready; the message ends with the tail of its log."""

    def __init__(self, name: str, reason: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.summary = f"service {name} {reason} (log: {log_path})"
        tail = log_tail(log_path)
        super().__init__(f"{self.summary}\n{tail}" if tail else self.summary)


@dataclass
class RunningService:
    """A started service process, when it started, and how often the stack has restarted it."""

    spec: ServiceSpec
    process: subprocess.Popen
    log_path: Path
    restarts: int = 0
    started_at: float = field(default_factory=time.monotonic)
    # Times it was started again because it failed while starting (exit 1: the bus slow to answer, say).
    start_retries: int = 0

    def uptime(self) -> float:
        return time.monotonic() - self.started_at

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def key(self) -> str:
        """The service's name, or `<name>-<n>` for its n-th replica."""
        return self.spec.key

    @property
    def pid(self) -> int:
        return self.process.pid

    def exit_code(self) -> int | None:
        return self.process.poll()

    def terminate(self) -> None:
        """Ask the service to stop (SIGTERM): it shuts down its own children."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the service and anything left in its session (a worker it started)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()


def start_service(spec: ServiceSpec, common_env: Mapping[str, str], log_path: Path) -> RunningService:
    """Start one service as `sys.executable -m module`, in its own session."""
    argv = [sys.executable, "-m", spec.module, *spec.args]
    env = {"PYTHONUNBUFFERED": "1", **common_env, **spec.env}
    return RunningService(spec, spawn(argv, log_path, env), log_path)


def approval_ui_url(ports: StackPorts) -> str:
    """Where approvers sign in: the approval service's web UI."""
    return f"http://127.0.0.1:{ports.approval_ui}"


def webchat_url(ports: StackPorts) -> str:
    """Where people chat with the agent in a browser: the gateway's web chat."""
    return f"http://127.0.0.1:{ports.webchat}"
def inference_url(ports: StackPorts) -> str:
    """The OpenAI-compatible endpoint of the inference gateway: the planners' only way to a model."""
    return f"http://127.0.0.1:{ports.inference}/v1"


# One process only, whatever --replicas says: the scripted model is a test double. (Brokers replicate: a lease per
# tenant/workspace gives each workspace one owning broker, and the others take it over when the owner dies.)
SINGLE_INSTANCE = frozenset({"model"})


def default_services(layout: StateLayout, ports: StackPorts, model: ModelSettings,
                     replicas: int = 1, database_url: str | None = None) -> list[ServiceSpec]:
    """Caduceus's own services, plus the scripted model when no model endpoint is configured.

    replicas > 1 runs that many processes of every service not in SINGLE_INSTANCE, on the one bus and the one
    store: each has its own health port, and they share their web ports (CADUCEUS_SHARED_PORTS). With
    `database_url` (PostgreSQL), every store is there instead of in SQLite files in the state dir: the audit
    chains, identity's records, the web chat's conversations and the MCP pins.
    """
    endpoint = model.for_stack(ports.model)
    issuer_url = f"http://127.0.0.1:{ports.issuer}"
    table: list[ServiceSpec] = []

    def in_database(variable: str) -> dict[str, str]:
        return {variable: database_url} if database_url else {}

    if model.is_scripted:
        table.append(ServiceSpec(
            "model", "caduceus_embedded.scripted_model",
            args=("--port", str(ports.model), "--scenarios", str(layout.scenarios_file)),
            ready_url=f"{endpoint.base_url}/models", url=endpoint.base_url,
        ))
    services = [
        ServiceSpec("audit", "caduceus_audit", {"CADUCEUS_AUDIT_DB_URL": database_url or layout.audit_db_url}),
        ServiceSpec("identity", "caduceus_identity", {
            **in_database("CADUCEUS_IDENTITY_DB_URL"),
            "CADUCEUS_TENANTS_FILE": str(layout.tenants_file),
            "CADUCEUS_DEV_ISSUER_PORT": str(ports.issuer),
            "CADUCEUS_OIDC_ISSUER_URL": issuer_url,
        }, url=issuer_url),
        ServiceSpec("policy", "caduceus_policy", {
            "CADUCEUS_POLICY_FILE": str(layout.policy_file),
            "CADUCEUS_WORKSPACES_DIR": str(layout.workspaces),
        }),
        ServiceSpec("approval", "caduceus_approval", {
            "CADUCEUS_TEMPORAL_ADDRESS": f"127.0.0.1:{ports.temporal}",
            "CADUCEUS_TEMPORAL_UI_URL": f"http://127.0.0.1:{ports.temporal_ui}",
            "CADUCEUS_TENANTS_FILE": str(layout.tenants_file),
            "CADUCEUS_OIDC_ISSUER_URL": issuer_url,
            "CADUCEUS_UI_PORT": str(ports.approval_ui),
        }, url=approval_ui_url(ports)),
        ServiceSpec("broker", "caduceus_broker", {
            "CADUCEUS_WORKSPACES_DIR": str(layout.workspaces),
            "CADUCEUS_WORKERS_DIR": str(layout.workers),
            # planners reach a model only through the inference gateway, which alone holds the model's key
            "CADUCEUS_MODEL_BASE_URL": inference_url(ports), "CADUCEUS_MODEL_API_KEY": "",
            "CADUCEUS_MODEL_NAME": endpoint.name,
        }),
        ServiceSpec("gateway", "caduceus_gateway", {
            **in_database("CADUCEUS_GATEWAY_DB_URL"),
            "CADUCEUS_TENANTS_FILE": str(layout.tenants_file),
            "CADUCEUS_OIDC_ISSUER_URL": issuer_url,
            "CADUCEUS_WEB_PORT": str(ports.webchat),
            "CADUCEUS_APPROVALS_URL": approval_ui_url(ports),
        }, url=webchat_url(ports)),
        ServiceSpec("mcp", "caduceus_mcp", {
            **in_database("CADUCEUS_PINS_DB_URL"),
            "CADUCEUS_SANDBOX_FILE": str(layout.sandbox_file),
            "CADUCEUS_ENDPOINT_PORT": str(ports.mcp_endpoint),
            "CADUCEUS_TENANTS_FILE": str(layout.tenants_file),
            "CADUCEUS_OIDC_ISSUER_URL": issuer_url,
        }, url=f"http://127.0.0.1:{ports.mcp_endpoint}/mcp/<tenant>"),
        ServiceSpec("inference", "caduceus_inference", {
            "CADUCEUS_INFERENCE_PORT": str(ports.inference),
            "CADUCEUS_INFERENCE_UPSTREAMS": json.dumps({"default": {
                "base_url": endpoint.base_url, "api_key": endpoint.api_key}}),
        }, url=inference_url(ports)),
    ]
    # Each serves /healthz, /readyz and /metrics on a port of its own.
    table += [replace(spec, env={**spec.env, "CADUCEUS_HTTP_PORT": str(ports.http_port(spec.name))},
                      metrics_url=f"http://127.0.0.1:{ports.http_port(spec.name)}") for spec in services]
    if replicas > 1:
        table = [spec for first in table for spec in _replicas_of(first, ports, replicas)]
    return table


def _replicas_of(first: ServiceSpec, ports: StackPorts, replicas: int) -> list[ServiceSpec]:
    """The processes of one service: each ready when its own /readyz answers (the bus health request is
    answered by whichever replica is quickest), each with its own health port, all sharing the web port."""
    if first.name in SINGLE_INSTANCE:
        return [first]
    specs = []
    for replica in range(1, replicas + 1):
        http = f"http://127.0.0.1:{ports.http_port(first.name, replica)}"
        env = {**first.env, "CADUCEUS_HTTP_PORT": str(ports.http_port(first.name, replica)),
               "CADUCEUS_SHARED_PORTS": "true"}
        if first.name == "identity" and replica > 1:
            env["CADUCEUS_DEV_ISSUER_PORT"] = "0"  # the dev issuer keeps sign-in codes in memory: the first only
        specs.append(replace(first, env=env, replica=replica, metrics_url=http, ready_url=f"{http}/readyz"))
    return specs
