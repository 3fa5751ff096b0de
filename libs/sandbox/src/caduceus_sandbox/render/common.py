"""What every container renderer assumes about the deployment, in one place.

Workers run the Caduceus image (infra/docker/Dockerfile) as `python -m caduceus_broker.<role>`,
reach NATS at `nats:4222`, and (when egress is allowed) an egress proxy at `egress-proxy:3128`
that enforces the same allowlist and address rules as the broker's proxy does under bubblewrap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from caduceus_sandbox.policy import SandboxPolicy

IMAGE = "caduceus:local"
NATS = ("nats", 4222)
EGRESS_PROXY = ("egress-proxy", 3128)
SANDBOX_USER = 65534
HOME = "/var/lib/caduceus/home"
WORKSPACE = "/workspace"
KEYS = "/etc/caduceus/keys"
PYTHON = "/usr/local/bin/python3.11"  # the image's interpreter (python:3.11-slim)
ROLES = ("planner", "executor")
DEFAULT_MODEL_URL = "http://model:8901/v1"


@dataclass
class Rendering:
    """Rendered configuration, and what the target cannot express that the policy asks for."""

    documents: list[dict]
    warnings: list[str] = field(default_factory=list)


def worker_env(policy: SandboxPolicy, role: str) -> dict[str, str]:
    env = {"CADUCEUS_NATS_URL": f"nats://{NATS[0]}:{NATS[1]}", "CADUCEUS_WORKER_ROLE": role,
           "CADUCEUS_KEYS_DIR": KEYS, "HERMES_HOME": HOME, "HOME": HOME}
    if role == "planner":
        env["CADUCEUS_MODEL_BASE_URL"] = model_url(policy)
    else:
        env.update(CADUCEUS_WORKSPACE_DIR=WORKSPACE, TERMINAL_CWD=WORKSPACE)
        if policy.network.egress == "allowlist":
            proxy = f"http://{EGRESS_PROXY[0]}:{EGRESS_PROXY[1]}"
            env.update(HTTP_PROXY=proxy, HTTPS_PROXY=proxy, NO_PROXY=NATS[0])
    return env


def model_url(policy: SandboxPolicy) -> str:
    return policy.planner.model_base_url or DEFAULT_MODEL_URL


def model_endpoint(policy: SandboxPolicy) -> tuple[str, int]:
    parts = urlsplit(model_url(policy))
    return parts.hostname or "model", parts.port or (443 if parts.scheme == "https" else 80)


def limit_warnings(policy: SandboxPolicy, target: str, *, pids: bool, nofile: bool, cpu: bool) -> list[str]:
    process = policy.process
    warnings = []
    if not pids:
        warnings.append(f"{target} has no per-workload process limit: set the node's pod PID limit to "
                        f"{process.max_processes} or less")
    if not nofile:
        warnings.append(f"{target} has no per-workload open-file limit ({process.max_open_files} asked)")
    if not cpu and process.max_cpu_seconds is not None:
        warnings.append(f"{target} limits CPU rate, not CPU time ({process.max_cpu_seconds} s asked)")
    return warnings


def secret_warnings(policy: SandboxPolicy, target: str) -> list[str]:
    return [f"{target} mounts call-scoped secret {s.name!r} for the executor's whole life (it cannot add and "
            "remove a file per call)" for s in policy.secrets.inject if s.scope == "call"]


def secret_env_names(policy: SandboxPolicy) -> dict[str, str]:
    """Environment secrets: variable name -> secret name (workspace scope; call scope is always a file)."""
    return {s.env: s.name for s in policy.secrets.inject if s.env}
