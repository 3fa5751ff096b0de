"""`caduceus sandbox`: check a sandbox policy, and render it for bubblewrap, Docker, Kubernetes or OpenShell."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from caduceus.scripting import BAD, USAGE, AsJson, print_json, require_readable
from caduceus_broker import WORKER_PACKAGES
from caduceus_sandbox import TARGETS, BwrapBackend, PolicyError, SandboxUnavailable, load_policy, python_runtime, render

sandbox_app = typer.Typer(
    help="Sandbox policies: what a tenant/workspace's planner and executor may read, write, reach and run.\n\n"
    "The broker looks for sandboxes/<tenant>/<workspace>.yaml, then sandboxes/<tenant>.yaml, then sandbox.yaml "
    "in the state dir. Examples: infra/sandbox/.",
    no_args_is_help=True)
err = Console(stderr=True, soft_wrap=True, highlight=False)


@sandbox_app.command("check")
def check(policy: Path = typer.Argument(..., help="Sandbox policy YAML file.", exists=True, dir_okay=False),
          as_json: AsJson = False) -> None:
    """Validate a policy and check that bubblewrap can enforce it on this machine.

    Exit 0: valid (a machine without bubblewrap is reported, not failed). Exit 1: the policy is refused.
    Exit 2: the file cannot be read.
    """
    require_readable(policy, "sandbox policy", err)
    try:
        loaded = load_policy(policy)
        findings = BwrapBackend().check(loaded)
    except PolicyError as exc:
        typer.echo(f"refused: {exc}", err=True)
        if as_json:
            print_json({"ok": False, "policy": str(policy), "problem": str(exc)})
        raise typer.Exit(BAD) from None
    for warning in findings.warnings:
        typer.echo(f"warning: {warning}", err=True)
    unavailable = None
    try:
        BwrapBackend().available()
        where = "and bubblewrap can enforce it here"
    except SandboxUnavailable as exc:
        unavailable = str(exc)
        where = f"but this machine cannot run sandboxes: {exc}"
    if as_json:
        print_json({"ok": True, "policy": str(policy), "name": loaded.name, "egress": loaded.network.egress,
                    "allowed_hosts": [r.host for r in loaded.network.allow], "secrets": len(loaded.secrets.inject),
                    "max_processes": loaded.process.max_processes, "warnings": list(findings.warnings),
                    "enforceable_here": unavailable is None, "unavailable": unavailable})
        return
    egress = ("no egress" if loaded.network.egress == "none"
              else f"egress to {', '.join(r.host for r in loaded.network.allow)}")
    typer.echo(f"{policy}: sandbox policy {loaded.name!r} is valid ({egress}, {len(loaded.secrets.inject)} "
               f"secret(s), at most {loaded.process.max_processes} processes) {where}")


@sandbox_app.command("render")
def render_command(
    policy: Path = typer.Argument(..., help="Sandbox policy YAML file.", exists=True, dir_okay=False),
    target: str = typer.Option(..., "--target", "-t", help=f"One of: {', '.join(TARGETS)}."),
) -> None:
    """Print the policy as TARGET configuration: the bwrap commands the broker runs, a docker run command and
    Compose document, Kubernetes Pods and NetworkPolicies, or OpenShell policy files."""
    if target not in TARGETS:
        typer.echo(f"unknown target {target!r}; choose one of: {', '.join(TARGETS)}", err=True)
        raise typer.Exit(USAGE)
    require_readable(policy, "sandbox policy", err)
    try:
        text = render(load_policy(policy), target, runtime=python_runtime(WORKER_PACKAGES), python=sys.executable)
    except PolicyError as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(BAD) from None
    typer.echo(text, nl=False)


def register(app: typer.Typer) -> None:
    app.add_typer(sandbox_app, name="sandbox")
