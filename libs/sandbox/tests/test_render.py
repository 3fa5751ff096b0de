"""Rendered Docker, Kubernetes and OpenShell configuration, checked against the targets' schemas."""

from __future__ import annotations

import json
import shlex
from importlib import resources
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from caduceus.cli import app
from caduceus_sandbox import SandboxPolicy
from caduceus_sandbox.render import render
from caduceus_sandbox.render.docker import docker_run

ROOT = Path(__file__).resolve().parents[3]
POLICIES = sorted((ROOT / "infra" / "sandbox").glob("*.yaml")) + [
    ROOT / "libs/embedded/src/caduceus_embedded/defaults/sandbox.yaml"]
K8S_VERSION = "1.30"


@pytest.fixture()
def rich_policy(tmp_path: Path) -> SandboxPolicy:
    store = tmp_path / "secrets"
    store.mkdir()
    for name in ("api_token", "deploy_key"):
        (store / name).write_text("value")
    return SandboxPolicy.model_validate({
        "name": "build_tools",
        "network": {"egress": "allowlist", "allow": [{"host": "pypi.org"}, {"host": "10.20.0.5", "ports": [8080, 8443]}],
                    "allow_addresses": ["10.20.0.0/24"]},
        "process": {"max_processes": 128, "max_memory_mb": 2048, "max_cpu_seconds": 600, "max_open_files": 512},
        "secrets": {"store": str(store), "inject": [
            {"name": "api_token", "env": "API_TOKEN"},
            {"name": "deploy_key", "file": True, "scope": "call", "tools": ["terminal"]}]},
        "planner": {"model_base_url": "https://models.example.com/v1"},
    })


def compose_schema() -> dict:
    # The Compose Specification's JSON schema, as vendored by check-jsonschema (vendor/compose-spec.json).
    source = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(source.read_text())


def test_kubernetes_manifests_are_valid_and_locked_down(rich_policy: SandboxPolicy) -> None:
    documents = list(yaml.safe_load_all(render(rich_policy, "k8s")))
    for document in documents:
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)
    pods = {d["spec"]["containers"][0]["name"]: d for d in documents if d["kind"] == "Pod"}
    executor = pods["executor"]["spec"]
    container = executor["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert executor["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["limits"]["memory"] == "2048Mi"
    assert {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "caduceus-secrets-build-tools",
                                                                "key": "api_token"}}} in container["env"]
    planner = pods["planner"]["spec"]
    assert not any(m["mountPath"] == "/workspace" for m in planner["containers"][0]["volumeMounts"])
    assert not any("API_TOKEN" == e["name"] for e in planner["containers"][0]["env"])
    policies = [d for d in documents if d["kind"] == "NetworkPolicy"]
    assert len(policies) == 2 and all(p["spec"]["policyTypes"] == ["Ingress", "Egress"] for p in policies)


def test_kubernetes_validation_catches_a_broken_manifest(rich_policy: SandboxPolicy) -> None:
    pod = next(yaml.safe_load_all(render(rich_policy, "k8s")))
    pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True  # misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_compose_document_is_valid_and_locked_down(rich_policy: SandboxPolicy) -> None:
    text = render(rich_policy, "docker")
    document = yaml.safe_load(text)
    jsonschema.validate(document, compose_schema())
    executor = document["services"]["caduceus-executor"]
    assert executor["read_only"] is True and executor["cap_drop"] == ["ALL"]
    assert executor["pids_limit"] == 128 and executor["mem_limit"] == "2048m"
    assert executor["ulimits"] == {"nofile": 512, "cpu": 600}
    assert document["networks"]["caduceus-control"]["internal"] is True
    assert "API_TOKEN" not in document["services"]["caduceus-planner"]["environment"]
    assert "# note: Docker mounts call-scoped secret 'deploy_key'" in text


def test_compose_validation_catches_a_broken_document(rich_policy: SandboxPolicy) -> None:
    document = yaml.safe_load(render(rich_policy, "docker"))
    document["services"]["caduceus-executor"]["read_onyl"] = True  # misspelt: Compose would ignore the setting
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, compose_schema())


def test_docker_run_command_carries_every_limit(rich_policy: SandboxPolicy) -> None:
    argv = docker_run(rich_policy, "executor")
    text = shlex.join(argv)
    for flag in ("--read-only", "--cap-drop ALL", "--security-opt no-new-privileges:true", "--pids-limit 128",
                 "--memory 2048m", "--ulimit nofile=512:512", "--ulimit cpu=600:600", "--network caduceus-control",
                 "--user 65534:65534"):
        assert flag in text, flag
    assert argv[argv.index("caduceus:local") + 1:] == ["python", "-m", "caduceus_broker.executor"]
    assert "--env API_TOKEN" in text and "API_TOKEN" not in shlex.join(docker_run(rich_policy, "planner"))


def test_openshell_policy_uses_only_documented_fields(rich_policy: SandboxPolicy) -> None:
    planner, executor = yaml.safe_load_all(render(rich_policy, "openshell"))
    for document in (planner, executor):
        assert set(document) <= {"version", "filesystem_policy", "landlock", "process", "network_policies"}
        assert set(document["filesystem_policy"]) <= {"include_workdir", "read_only", "read_write"}
        assert document["landlock"] == {"compatibility": "hard_requirement"}
        assert document["process"]["run_as_user"] != "0"
        for rule in document["network_policies"].values():
            assert set(rule) <= {"name", "endpoints", "binaries"} and rule["binaries"]
            for endpoint in rule["endpoints"]:
                assert set(endpoint) <= {"host", "port", "ports", "allowed_ips"}
                assert ("port" in endpoint) != ("ports" in endpoint)
    assert set(planner["network_policies"]) == {"caduceus_bus", "model"}
    assert planner["network_policies"]["model"]["endpoints"] == [{"host": "models.example.com", "port": 443}]
    egress = [r["endpoints"][0] for k, r in executor["network_policies"].items() if k.startswith("egress_")]
    assert {"host": "10.20.0.5", "ports": [8080, 8443], "allowed_ips": ["10.20.0.0/24"]} in egress
    assert "/workspace" in executor["filesystem_policy"]["read_write"]
    assert "/workspace" not in planner["filesystem_policy"]["read_write"]


@pytest.mark.parametrize("policy_file", POLICIES, ids=lambda p: p.name)
def test_shipped_policies_check_and_render_for_every_target(policy_file: Path) -> None:
    runner = CliRunner()
    checked = runner.invoke(app, ["sandbox", "check", str(policy_file)])
    assert checked.exit_code == 0, checked.output
    assert "is valid" in checked.output
    for target in ("bwrap", "docker", "k8s", "openshell"):
        rendered = runner.invoke(app, ["sandbox", "render", "--target", target, str(policy_file)])
        assert rendered.exit_code == 0, rendered.output
    bwrap = runner.invoke(app, ["sandbox", "render", "--target", "bwrap", str(policy_file)]).output
    assert "--unshare-net" in bwrap or "--unshare-all" in bwrap
    assert "caduceus_sandbox.inside" in bwrap


def test_cli_refuses_a_policy_with_the_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("network: {egress: allowlist}\n")
    result = CliRunner().invoke(app, ["sandbox", "check", str(bad)])
    assert result.exit_code == 1 and "no host is allowed" in result.output
    result = CliRunner().invoke(app, ["sandbox", "render", "--target", "podman", str(bad)])
    assert result.exit_code == 2 and "bwrap, docker, k8s, openshell" in result.output
