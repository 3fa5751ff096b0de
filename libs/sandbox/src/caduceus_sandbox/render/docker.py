"""Docker: a `docker run` command and a Compose document for a policy's planner and executor.

Both join an internal network (no route out) shared with NATS and, when the policy allows
egress, the egress proxy; the root filesystem is read-only; /tmp is a tmpfs.
"""

from __future__ import annotations

from caduceus_sandbox.policy import SandboxPolicy
from caduceus_sandbox.render.common import (
    HOME,
    IMAGE,
    ROLES,
    SANDBOX_USER,
    WORKSPACE,
    Rendering,
    limit_warnings,
    secret_env_names,
    secret_warnings,
    worker_env,
)

NETWORK = "caduceus-control"


def _settings(policy: SandboxPolicy, role: str) -> dict:
    process = policy.process
    ulimits = {"nofile": process.max_open_files}
    if process.max_cpu_seconds is not None:
        ulimits["cpu"] = process.max_cpu_seconds
    volumes = [f"caduceus-{role}-home:{HOME}:rw", "caduceus-keys:/etc/caduceus/keys:ro"]
    if role == "executor":
        volumes.append(f"caduceus-workspace:{WORKSPACE}:rw")
    return {"ulimits": ulimits, "volumes": volumes, "env": worker_env(policy, role),
            "tmpfs": f"/tmp:rw,nosuid,nodev,size={policy.filesystem.tmp_size_mb}m"}


def docker_run(policy: SandboxPolicy, role: str) -> list[str]:
    """The `docker run` argv of one worker (secrets as Docker secrets need Compose or Swarm: see compose())."""
    settings = _settings(policy, role)
    process = policy.process
    argv = ["docker", "run", "--rm", "--name", f"caduceus-{role}", "--read-only", "--tmpfs", settings["tmpfs"],
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true", "--user",
            f"{SANDBOX_USER}:{SANDBOX_USER}", "--pids-limit", str(process.max_processes), "--memory",
            f"{process.max_memory_mb}m", "--network", NETWORK]
    for name, value in settings["ulimits"].items():
        argv += ["--ulimit", f"{name}={value}:{value}"]
    for volume in settings["volumes"]:
        argv += ["--volume", volume]
    for name, value in settings["env"].items():
        argv += ["--env", f"{name}={value}"]
    if role == "executor":
        for variable in secret_env_names(policy):
            argv += ["--env", variable]  # taken from the caller's environment; export it from the secret store
        for secret in policy.secrets.inject:
            if secret.file and policy.secrets.store is not None:
                argv += ["--volume", f"{policy.secrets.store / secret.name}:{secret.path}:ro"]
    return argv + [IMAGE, "python", "-m", f"caduceus_broker.{role}"]


def compose(policy: SandboxPolicy) -> Rendering:
    """A Compose document with both workers, their network, volumes and secrets."""
    services = {}
    for role in ROLES:
        settings = _settings(policy, role)
        process = policy.process
        service = {
            "image": IMAGE,
            "command": ["python", "-m", f"caduceus_broker.{role}"],
            "user": f"{SANDBOX_USER}:{SANDBOX_USER}",
            "read_only": True,
            "tmpfs": [settings["tmpfs"]],
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "pids_limit": process.max_processes,
            "mem_limit": f"{process.max_memory_mb}m",
            "ulimits": settings["ulimits"],
            "environment": settings["env"],
            "volumes": settings["volumes"],
            "networks": [NETWORK],
        }
        if role == "executor" and policy.secrets.inject:
            service["secrets"] = [{"source": s.name, "target": s.name} for s in policy.secrets.inject if s.file]
            for variable in secret_env_names(policy):
                service["environment"][variable] = f"${{{variable}}}"
        services[f"caduceus-{role}"] = service
    document: dict = {
        "name": f"caduceus-sandbox-{policy.name}",
        "services": services,
        # internal: no route to anything but the containers on it (NATS, the egress proxy).
        "networks": {NETWORK: {"internal": True}},
        "volumes": {name: {} for name in ("caduceus-planner-home", "caduceus-executor-home", "caduceus-keys",
                                          "caduceus-workspace")},
    }
    file_secrets = [s for s in policy.secrets.inject if s.file]
    if file_secrets and policy.secrets.store is not None:
        document["secrets"] = {s.name: {"file": str(policy.secrets.store / s.name)} for s in file_secrets}
    warnings = limit_warnings(policy, "Docker", pids=True, nofile=True, cpu=True) + secret_warnings(policy, "Docker")
    if policy.network.egress == "allowlist":
        warnings.append("run an egress proxy named egress-proxy on the caduceus-control network that allows only "
                        + ", ".join(f"{r.host}:{'/'.join(map(str, r.ports))}" for r in policy.network.allow))
    return Rendering([document], warnings)
