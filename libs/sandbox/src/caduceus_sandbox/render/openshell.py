"""NVIDIA OpenShell: a sandbox policy file (version 1) per worker role.

Filesystem rules map to Landlock read_only/read_write paths (hard requirement), the user to
process.run_as_*, and egress to network_policies whose binary is the worker's interpreter
(a rule covers the processes that binary starts, so every tool the worker runs).
"""

from __future__ import annotations

import ipaddress

from caduceus_sandbox.policy import SandboxPolicy
from caduceus_sandbox.render.common import (
    HOME,
    NATS,
    PYTHON,
    ROLES,
    SANDBOX_USER,
    WORKSPACE,
    Rendering,
    limit_warnings,
    model_endpoint,
    secret_warnings,
)


def openshell_policy(policy: SandboxPolicy, role: str) -> dict:
    rules: dict = {"caduceus_bus": {"name": "caduceus-bus", "endpoints": [{"host": NATS[0], "port": NATS[1]}],
                                    "binaries": _binaries()}}
    if role == "planner":
        host, port = model_endpoint(policy)
        rules["model"] = {"name": "model", "endpoints": [{"host": host, "port": port}], "binaries": _binaries()}
    elif policy.network.egress == "allowlist":
        for index, rule in enumerate(policy.network.allow):
            endpoint: dict = {"host": rule.host}
            if len(rule.ports) == 1:
                endpoint["port"] = rule.ports[0]
            else:
                endpoint["ports"] = list(rule.ports)
            allowed = _allowed_ips(rule.host, policy)
            if allowed:
                endpoint["allowed_ips"] = allowed
            rules[f"egress_{index}"] = {"name": f"egress-{rule.host}", "endpoints": [endpoint], "binaries": _binaries()}
    read_write = ["/tmp", HOME] + ([WORKSPACE] if role == "executor" else [])
    return {
        "version": 1,
        "filesystem_policy": {"include_workdir": role == "executor", "read_only": list(policy.filesystem.read_only),
                              "read_write": read_write},
        "landlock": {"compatibility": "hard_requirement"},
        "process": {"run_as_user": str(SANDBOX_USER), "run_as_group": str(SANDBOX_USER)},
        "network_policies": rules,
    }


def _binaries() -> list[dict]:
    # The worker's interpreter: a rule also covers every process it starts (each tool).
    return [{"path": PYTHON}]


def _allowed_ips(host: str, policy: SandboxPolicy) -> list[str]:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return []
    return [str(n) for n in policy.network.allow_addresses if address in n]


def policies(policy: SandboxPolicy) -> Rendering:
    warnings = limit_warnings(policy, "OpenShell", pids=False, nofile=False, cpu=False)
    warnings.append(f"OpenShell policies carry no memory limit ({policy.process.max_memory_mb} MiB asked): "
                    "set it on the sandbox's compute driver")
    warnings += secret_warnings(policy, "OpenShell")
    if any(not _is_ip(r.host) for r in policy.network.allow):
        warnings.append("OpenShell lets an exact host name reach the private addresses it resolves to; the "
                        "Caduceus proxy refuses them unless allow_addresses lists them")
    return Rendering([openshell_policy(policy, role) for role in ROLES], warnings)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
