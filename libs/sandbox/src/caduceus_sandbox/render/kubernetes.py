"""Kubernetes: a Pod per worker role with a restricted securityContext and limits, and a NetworkPolicy
that lets it reach only DNS, NATS, and (planner: the model, executor: allowlisted hosts) the egress proxy.

NetworkPolicy cannot name hosts, so host allowlists are enforced by the egress proxy pod
(labelled app=caduceus-egress-proxy), which applies the same rules as the broker's proxy.
"""

from __future__ import annotations

from caduceus_sandbox.policy import SandboxPolicy
from caduceus_sandbox.render.common import (
    EGRESS_PROXY,
    HOME,
    IMAGE,
    KEYS,
    NATS,
    ROLES,
    SANDBOX_USER,
    WORKSPACE,
    Rendering,
    limit_warnings,
    model_endpoint,
    secret_env_names,
    secret_warnings,
    worker_env,
)


def _name(policy: SandboxPolicy, role: str) -> str:
    return f"caduceus-{role}-{policy.name}".lower().replace("_", "-")[:63]


def pod(policy: SandboxPolicy, role: str) -> dict:
    process = policy.process
    secret_name = f"caduceus-secrets-{policy.name}".lower().replace("_", "-")
    env = [{"name": k, "value": v} for k, v in worker_env(policy, role).items()]
    if role == "planner" or policy.network.egress == "allowlist":
        proxy = f"http://{EGRESS_PROXY[0]}:{EGRESS_PROXY[1]}"
        if role == "planner":  # the model is reached through the egress proxy, which allows only it
            env += [{"name": "HTTP_PROXY", "value": proxy}, {"name": "HTTPS_PROXY", "value": proxy},
                    {"name": "NO_PROXY", "value": NATS[0]}]
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "home", "mountPath": HOME},
              {"name": "keys", "mountPath": KEYS, "readOnly": True}]
    volumes = [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": f"{policy.filesystem.tmp_size_mb}Mi"}},
               {"name": "home", "emptyDir": {}},
               {"name": "keys", "configMap": {"name": "caduceus-public-keys"}}]
    if role == "executor":
        mounts.append({"name": "workspace", "mountPath": WORKSPACE})
        volumes.append({"name": "workspace", "persistentVolumeClaim": {"claimName": f"{_name(policy, 'workspace')}"}})
        for variable, secret in secret_env_names(policy).items():
            env.append({"name": variable, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": secret}}})
        file_secrets = [s for s in policy.secrets.inject if s.file]
        if file_secrets:
            mounts.append({"name": "secrets", "mountPath": "/run/secrets", "readOnly": True})
            volumes.append({"name": "secrets", "secret": {"secretName": secret_name, "defaultMode": 0o400,
                                                          "items": [{"key": s.name, "path": s.name}
                                                                    for s in file_secrets]}})
    container = {
        "name": role,
        "image": IMAGE,
        "command": ["python", "-m", f"caduceus_broker.{role}"],
        "workingDir": WORKSPACE if role == "executor" else HOME,
        "env": env,
        "resources": {"limits": {"memory": f"{process.max_memory_mb}Mi"},
                      "requests": {"memory": f"{min(process.max_memory_mb, 512)}Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": mounts,
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": _name(policy, role),
                     "labels": {"app": "caduceus-worker", "caduceus.dev/role": role,
                                "caduceus.dev/sandbox": policy.name},
                     "annotations": {"caduceus.dev/max-processes": str(process.max_processes),
                                     "caduceus.dev/max-open-files": str(process.max_open_files)}},
        "spec": {
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "hostNetwork": False, "hostPID": False, "hostIPC": False,
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "runAsUser": SANDBOX_USER, "runAsGroup": SANDBOX_USER,
                                "fsGroup": SANDBOX_USER, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container],
            "volumes": volumes,
        },
    }


def network_policy(policy: SandboxPolicy, role: str) -> dict:
    dns = {"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
           "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
    nats = {"to": [{"podSelector": {"matchLabels": {"app": NATS[0]}}}], "ports": [{"protocol": "TCP", "port": NATS[1]}]}
    egress = [dns, nats]
    if role == "planner" or policy.network.egress == "allowlist":
        egress.append({"to": [{"podSelector": {"matchLabels": {"app": "caduceus-egress-proxy"}}}],
                       "ports": [{"protocol": "TCP", "port": EGRESS_PROXY[1]}]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": _name(policy, role)},
        "spec": {"podSelector": {"matchLabels": {"caduceus.dev/role": role, "caduceus.dev/sandbox": policy.name}},
                 "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": egress},
    }


def manifests(policy: SandboxPolicy) -> Rendering:
    documents = []
    for role in ROLES:
        documents += [pod(policy, role), network_policy(policy, role)]
    host, port = model_endpoint(policy)
    warnings = limit_warnings(policy, "Kubernetes", pids=False, nofile=False, cpu=True)
    warnings += secret_warnings(policy, "Kubernetes")
    allowed = [f"{host}:{port} (planner only)"]
    allowed += [f"{r.host}:{'/'.join(map(str, r.ports))} (executor)" for r in policy.network.allow]
    warnings.append("run an egress proxy (app=caduceus-egress-proxy) that allows only " + ", ".join(allowed))
    return Rendering(documents, warnings)
