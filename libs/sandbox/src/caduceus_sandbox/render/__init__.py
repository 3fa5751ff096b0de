"""Render one sandbox policy for a target: bwrap (what the broker runs here), docker, k8s, openshell.

Each rendering is text ready to use, with what the target cannot express as comments at the top.
"""

from __future__ import annotations

import shlex
import tempfile
from pathlib import Path

import yaml

from caduceus_sandbox.bwrap import BwrapBackend
from caduceus_sandbox.channels import egress_channel, relay_channel
from caduceus_sandbox.plan import SandboxPlan
from caduceus_sandbox.policy import SandboxPolicy
from caduceus_sandbox.render import docker, kubernetes, openshell
from caduceus_sandbox.render.common import ROLES, Rendering, model_url

TARGETS = ("bwrap", "docker", "k8s", "openshell")
EXAMPLE_STATE = Path("/var/lib/caduceus")


def render(policy: SandboxPolicy, target: str, *, runtime: tuple[Path, ...] = (), python: str = "python3") -> str:
    """The policy as `target` configuration (see TARGETS); `runtime`/`python` describe the bwrap worker."""
    if target == "bwrap":
        return _bwrap(policy, runtime, python)
    if target == "docker":
        rendering = docker.compose(policy)
        runs = "".join(f"# docker run, {role}:\n# {shlex.join(docker.docker_run(policy, role))}\n" for role in ROLES)
        return _comments(rendering.warnings) + runs + _yaml(rendering)
    if target == "k8s":
        return _comments(kubernetes.manifests(policy).warnings) + _yaml(kubernetes.manifests(policy))
    if target == "openshell":
        rendering = openshell.policies(policy)
        parts = [f"# OpenShell policy for the {role}\n" + yaml.safe_dump(doc, sort_keys=False)
                 for role, doc in zip(ROLES, rendering.documents)]
        return _comments(rendering.warnings) + "---\n".join(parts)
    raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")


def _bwrap(policy: SandboxPolicy, runtime: tuple[Path, ...], python: str) -> str:
    backend = BwrapBackend(bwrap=BwrapBackend().bwrap or "bwrap")
    as_root = " (as root: the launcher drops to an unprivileged user)" if backend.privileged else ""
    out = [f"# bubblewrap as the broker runs it{as_root}; example paths under {EXAMPLE_STATE}"]
    for role in ROLES:
        channels = [relay_channel("nats", "nats://127.0.0.1:4222", 0)[0]]
        if role == "planner":
            channels.append(relay_channel("model", model_url(policy), 1)[0])
        elif policy.network.egress == "allowlist":
            channels.append(egress_channel(1)[0])
        with tempfile.TemporaryDirectory(prefix="caduceus-render-") as run_dir:
            plan = SandboxPlan(
                role=role, policy=policy, command=(python, "-m", f"caduceus_broker.{role}"), env={},
                home=EXAMPLE_STATE / "workers/TENANT/WORKSPACE" / f"{role}-home", run_dir=Path(run_dir),
                workspace=EXAMPLE_STATE / "workspaces/TENANT/WORKSPACE" if role == "executor" else None,
                runtime=runtime, channels=tuple(channels), secret_files=any(s.file for s in policy.secrets.inject))
            argv = backend.command(plan)
            text = shlex.join(argv).replace(run_dir, "/run/caduceus-broker/SANDBOX")
        relays = ", ".join(f"{c.inside_host}:{c.inside_port} -> {c.name}" for c in channels)
        out.append(f"# {role} (channels: {relays})\n{text}")
    return "\n".join(out) + "\n"


def _comments(warnings: list[str]) -> str:
    return "".join(f"# note: {w}\n" for w in warnings)


def _yaml(rendering: Rendering) -> str:
    return yaml.safe_dump_all(rendering.documents, sort_keys=False)
