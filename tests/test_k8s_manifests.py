"""infra/k8s cannot be applied here (no cluster): render it as kustomize would and check it statically.

The production overlay is rendered with the files an operator provides (`caduceus deployment secrets`, the
env files, tenants and policy), every object is validated strictly against the schemas of the two newest
Kubernetes minor versions kubernetes-validate knows, and the properties the issue asks for are checked:
one Secret per service that no other service can mount, non-root read-only containers, probes, resources,
replicas, disruption budgets, network policies, and every store in PostgreSQL (a URL from the service's own Secret,
the database reachable and nothing else on its port).
"""

from __future__ import annotations

import base64
import copy
import importlib
import json
import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as k8s_schemas
from pydantic_settings import BaseSettings
from typer.testing import CliRunner

from caduceus.cli import app
from caduceus.deployment import SERVICE_FILES
from caduceus_embedded.binaries import engine_versions

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "infra" / "k8s"
DEFAULTS = ROOT / "libs" / "embedded" / "src" / "caduceus_embedded" / "defaults"
README = ROOT / "README.md"
SERVICES = sorted(path.name for path in (ROOT / "services").iterdir() if (path / "pyproject.toml").exists())
CLUSTER_SCOPED = {"Namespace"}
OVERLAY_DATABASE = [{"ipBlock": {"cidr": "10.20.30.40/32"}}]  # the address the production overlay's patches set


def database_url_settings() -> dict[str, str]:
    """Each service's database URL variable, from its settings: every `*_db_url` field (a store of its own)."""
    found: dict[str, str] = {}
    for service in SERVICES:
        module = importlib.import_module(f"caduceus_{service}.settings")
        for model in vars(module).values():
            if isinstance(model, type) and issubclass(model, BaseSettings) and model.__module__ == module.__name__:
                prefix = model.model_config.get("env_prefix", "")
                for field in (field for field in model.model_fields if field.endswith("db_url")):
                    assert service not in found, f"{service} has two databases: one Secret caduceus-{service}-db each?"
                    found[service] = f"{prefix}{field}".upper()
    return found


DATABASE_URLS = database_url_settings()


# --- a small kustomize: resources, namespace, generators (no name hash), strategic-merge patches by name, images


def merge(base: object, patch: object) -> object:
    """Strategic merge as kustomize does it for these objects: maps deeply, lists of named items by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = merge(base[key], value) if key in base else value
        return merged
    if (isinstance(base, list) and isinstance(patch, list) and base and patch
            and all(isinstance(item, dict) and "name" in item for item in base + patch)):
        by_name = {item["name"]: item for item in base}
        for item in patch:
            by_name[item["name"]] = merge(by_name[item["name"]], item) if item["name"] in by_name else item
        return list(by_name.values())
    return patch


def generated(kind: str, spec: dict, root: Path) -> dict:
    data: dict[str, bytes] = {}
    for entry in spec.get("files", []):
        key, _, path = entry.rpartition("=")
        data[key or Path(path).name] = (root / path).read_bytes()
    for env_file in spec.get("envs", []):
        for line in (root / env_file).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                key, _, value = line.partition("=")
                data[key.strip()] = value.encode()
    for literal in spec.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value.encode()
    if kind == "Secret":
        return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": spec["name"]}, "type": "Opaque",
                "data": {key: base64.b64encode(value).decode() for key, value in data.items()}}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": spec["name"]},
            "data": {key: value.decode() for key, value in data.items()}}


def render(directory: Path) -> list[dict]:
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    objects: list[dict] = []
    for resource in spec.get("resources", []):
        path = directory / resource
        objects += render(path) if path.is_dir() else [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    if spec.get("configMapGenerator") or spec.get("secretGenerator"):
        # This renderer keeps names as written, which is what the overlay asks kustomize for.
        assert spec.get("generatorOptions", {}).get("disableNameSuffixHash") is True
    objects += [generated("ConfigMap", gen, directory) for gen in spec.get("configMapGenerator", [])]
    objects += [generated("Secret", gen, directory) for gen in spec.get("secretGenerator", [])]
    for patch in spec.get("patches", []):
        assert set(patch) == {"path"}, "only strategic-merge patch files, matched by kind and name, are rendered"
        for change in yaml.safe_load_all((directory / patch["path"]).read_text()):
            targets = [obj for obj in objects if obj["kind"] == change["kind"]
                       and obj["metadata"]["name"] == change["metadata"]["name"]]
            assert len(targets) == 1, f"{patch['path']} patches {change['kind']}/{change['metadata']['name']}"
            targets[0].update(merge(targets[0], change))
    for image in spec.get("images", []):
        for obj in objects:
            for container in pod_spec(obj).get("containers", []) if obj["kind"] == "Deployment" else []:
                if container["image"].split(":")[0] == image["name"]:
                    container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = spec["namespace"]
    return objects


def pod_spec(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The production overlay rendered with what an operator provides, as the README says to make it."""
    k8s = tmp_path_factory.mktemp("infra") / "k8s"
    shutil.copytree(K8S, k8s)
    overlay = k8s / "overlays" / "production"
    made = CliRunner().invoke(app, ["deployment", "secrets", "--out", str(overlay / "secrets")])
    assert made.exit_code == 0, made.output
    for service in DATABASE_URLS:
        (overlay / "secrets" / f"{service}-db.env").write_text(
            "url=postgresql+psycopg2://caduceus:pw@db.example.internal:5432/caduceus\n")
    (overlay / "secrets" / "approval-oidc.env").write_text("oidc-client-secret=\n")
    (overlay / "secrets" / "inference-upstreams.env").write_text(
        'upstreams={"default": {"base_url": "https://models.example.com/v1", "api_key": "sk-test"}}\n')
    (overlay / "config").mkdir()
    for name in ("tenants.yaml", "policy.yaml"):
        shutil.copy(DEFAULTS / name, overlay / "config" / name)
    return render(overlay)


def of_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def two_newest_minor_versions() -> list[str]:
    newest: dict[str, str] = {}
    for version in k8s_schemas.all_versions():
        minor = k8s_schemas.major_minor(version)
        newest[minor] = max(newest.get(minor, version), version, key=lambda v: tuple(map(int, v.split("."))))
    minors = sorted(newest, key=lambda v: tuple(map(int, v.split("."))))
    return [newest[minor] for minor in minors[-2:]]


# --- the tests


def test_every_object_is_valid_kubernetes_for_the_current_and_previous_minor_versions(production) -> None:
    versions = two_newest_minor_versions()
    assert len(versions) == 2 and versions[-1] == k8s_schemas.latest_version()
    base = render(K8S / "base")
    for version in versions:
        for obj in production + base:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} is not valid on Kubernetes {version}: "
                            f"{exc.message} at {'.'.join(map(str, exc.path))}")


def test_every_service_has_a_deployment_running_its_module(production) -> None:
    deployments = of_kind(production, "Deployment")
    assert sorted(deployments) == SERVICES
    for name, deployment in deployments.items():
        (container,) = pod_spec(deployment)["containers"]
        assert container["command"] == ["python", "-m", f"caduceus_{name}"]
        assert container["image"] == "registry.example.com/caduceus:0.1.0"


def secrets_a_pod_can_read(deployment: dict) -> set[str]:
    spec = pod_spec(deployment)
    names = {volume["secret"]["secretName"] for volume in spec.get("volumes", []) if "secret" in volume}
    names |= {source["secret"]["name"] for volume in spec.get("volumes", []) if "projected" in volume
              for source in volume["projected"]["sources"] if "secret" in source}
    for container in spec["containers"] + spec.get("initContainers", []):
        names |= {env["valueFrom"]["secretKeyRef"]["name"] for env in container.get("env", [])
                  if "secretKeyRef" in env.get("valueFrom", {})}
        names |= {source["secretRef"]["name"] for source in container.get("envFrom", []) if "secretRef" in source}
    return names


def test_no_service_can_mount_another_services_secret(production) -> None:
    secrets = of_kind(production, "Secret")
    for name, deployment in of_kind(production, "Deployment").items():
        readable = secrets_a_pod_can_read(deployment)
        assert f"caduceus-{name}" in readable
        foreign = {secret for secret in readable if secret != f"caduceus-{name}"
                   and not secret.startswith(f"caduceus-{name}-")}
        assert not foreign, f"{name} can read {sorted(foreign)}"
        assert readable <= set(secrets), f"{name} refers to Secrets the overlay does not make"
        mounts = {mount["name"]: mount for mount in pod_spec(deployment)["containers"][0]["volumeMounts"]}
        assert mounts["secrets"]["readOnly"] is True


def test_each_services_secret_holds_its_own_private_keys_and_bus_credential_only(production) -> None:
    secrets = of_kind(production, "Secret")
    owner_of_private_key: dict[str, str] = {}
    for service in SERVICES:
        data = {key: base64.b64decode(value) for key, value in secrets[f"caduceus-{service}"]["data"].items()}
        assert set(data) == set(SERVICE_FILES[service])
        for key in data:
            if key.endswith((".key", ".secret")):
                assert key not in owner_of_private_key, f"{key} is in {owner_of_private_key[key]}'s and {service}'s"
                owner_of_private_key[key] = service
        assert credential_name(data["bus.creds"]) == service
    assert {key for key, service in owner_of_private_key.items() if service == "broker"} == set()
    assert owner_of_private_key["policy.key"] == "policy" and owner_of_private_key["approval.key"] == "approval"


def credential_name(creds: bytes) -> str:
    """The user name in a .creds file's JWT: whose bus credential it is."""
    token = re.search(rb"-----BEGIN NATS USER JWT-----\n(.+?)\n", creds).group(1).split(b".")[1]
    return json.loads(base64.urlsafe_b64decode(token + b"=" * (-len(token) % 4)))["name"]


def test_every_container_runs_as_non_root_on_a_read_only_root_with_no_capabilities(production) -> None:
    for name, deployment in of_kind(production, "Deployment").items():
        spec = pod_spec(deployment)
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True and context["runAsUser"] != 0, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            seccomp = context.get("seccompProfile") or spec["securityContext"]["seccompProfile"]
            if name == "broker":
                continue
            assert seccomp == {"type": "RuntimeDefault"}, name
            assert "procMount" not in context and "hostUsers" not in spec, name


def test_the_broker_gets_exactly_what_bubblewrap_needs_and_the_profiles_ship_in_infra(production) -> None:
    broker = pod_spec(of_kind(production, "Deployment")["broker"])
    context = broker["containers"][0]["securityContext"]
    assert broker["hostUsers"] is False and context["procMount"] == "Unmasked"
    assert context["seccompProfile"] == {"type": "Localhost", "localhostProfile": "caduceus/broker-seccomp.json"}
    assert context["appArmorProfile"] == {"type": "Localhost", "localhostProfile": "caduceus-broker"}
    profile = json.loads((ROOT / "infra" / "sandbox" / "broker-seccomp.json").read_text())
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    allowed = {name for rule in profile["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW" and not rule.get("args")
               for name in rule["names"]}
    assert {"clone", "unshare", "mount", "umount2", "pivot_root", "setns", "sethostname"} <= allowed
    # What no sandbox builder needs stays refused: loading kernel code, tracing others, the keyring, new mount API.
    assert not allowed & {"bpf", "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
                          "ptrace", "process_vm_readv", "process_vm_writev", "keyctl", "add_key", "request_key",
                          "perf_event_open", "open_by_handle_at", "reboot", "swapon", "swapoff", "acct",
                          "settimeofday", "clock_settime", "userfaultfd", "io_uring_setup", "fsopen", "move_mount",
                          "open_tree", "mount_setattr", "iopl", "ioperm", "syslog", "quotactl"}
    apparmor = (ROOT / "infra" / "sandbox" / "apparmor-caduceus-broker").read_text()
    assert "profile caduceus-broker " in apparmor and "userns," in apparmor and "pivot_root," in apparmor


def test_every_deployment_has_probes_on_the_one_http_port_and_resources(production) -> None:
    port = int(of_kind(production, "ConfigMap")["caduceus-runtime"]["data"]["CADUCEUS_HTTP_PORT"])
    for name, deployment in of_kind(production, "Deployment").items():
        (container,) = pod_spec(deployment)["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["http"] == port, name
        for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            assert container[probe]["httpGet"] == {"path": path, "port": "http"}, (name, probe)
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
        assert "memory" in container["resources"]["limits"], name
        assert {"configMapRef": {"name": "caduceus-runtime"}} in container["envFrom"]


def test_production_runs_two_or_more_of_each_and_a_drain_never_takes_all_of_one(production) -> None:
    budgets = of_kind(production, "PodDisruptionBudget")
    for name, deployment in of_kind(production, "Deployment").items():
        assert deployment["spec"]["replicas"] >= 2, name
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [b for b in budgets.values() if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
                    and b["metadata"]["namespace"] == deployment["metadata"]["namespace"]]
        # Exactly one: the eviction API refuses to evict a pod that two budgets cover.
        assert len(covering) == 1, f"{name} is covered by {len(covering)} PodDisruptionBudgets"
        # One pod at a time whatever the replica count; minAvailable: 1 would block drains of a one-replica base.
        assert covering[0]["spec"] == {"maxUnavailable": 1, "selector": deployment["spec"]["selector"]}, name


def network_rules(objects: list[dict], service: str, direction: str) -> list[dict]:
    """The ingress or egress rules of every NetworkPolicy that selects the service's pods."""
    labels = of_kind(objects, "Deployment")[service]["spec"]["template"]["metadata"]["labels"]
    found = []
    for policy in of_kind(objects, "NetworkPolicy").values():
        if policy["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items():
            found += policy["spec"].get(direction, [])
    return found


def test_network_policies_allow_only_the_bus_the_database_temporal_and_each_services_needs(production) -> None:
    policies = of_kind(production, "NetworkPolicy")
    deny = policies["caduceus-default-deny"]["spec"]
    assert deny == {"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "caduceus"}},
                    "policyTypes": ["Ingress", "Egress"]}

    def rules(service: str, direction: str) -> list[dict]:
        return network_rules(production, service, direction)

    def ports(service: str, direction: str) -> set[int]:
        return {port["port"] for rule in rules(service, direction) for port in rule.get("ports", [])}

    assert ports("policy", "egress") == {53, 4222}
    assert ports("identity", "egress") == {53, 4222, 443, 5432}
    assert ports("approval", "egress") == {53, 4222, 7233, 443}
    assert ports("broker", "egress") == {53, 4222, 443, 8905}
    assert ports("inference", "egress") == {53, 4222, 443}
    assert ports("audit", "egress") == {53, 4222, 5432}
    assert ports("gateway", "egress") == {53, 4222, 443, 8902, 5432}  # 8902: the approvals API, for approvers
    assert ports("mcp", "egress") == {53, 4222, 443, 5432}
    assert {service for service in SERVICES if rules(service, "ingress")} == {"approval", "gateway", "inference"}
    assert ports("approval", "ingress") == {8902}
    assert ports("gateway", "ingress") == {8903}
    # only the broker's pods (the planners) reach the inference gateway
    (gateway_in,) = rules("inference", "ingress")
    assert gateway_in["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "broker",
                                                                   "app.kubernetes.io/part-of": "caduceus"}}}]
    assert ports("inference", "ingress") == {8905}


def test_every_store_in_production_is_a_database_url_from_the_services_own_secret(production) -> None:
    """Replicas share one store only in a database: a SQLite file in a pod's emptyDir is that pod's alone."""
    assert {"audit", "identity", "gateway", "mcp"} <= set(DATABASE_URLS)
    secrets = of_kind(production, "Secret")
    for service, variable in DATABASE_URLS.items():
        (container,) = pod_spec(of_kind(production, "Deployment")[service])["containers"]
        env = {entry["name"]: entry for entry in container.get("env", [])}
        assert variable in env, f"{service} has no {variable}: each replica would keep a store of its own"
        reference = env[variable].get("valueFrom", {}).get("secretKeyRef")
        assert reference == {"name": f"caduceus-{service}-db", "key": "url"}, \
            f"{service}'s {variable} is not read from its Secret caduceus-{service}-db"
        url = base64.b64decode(secrets[reference["name"]]["data"]["url"]).decode()
        assert url.startswith("postgresql"), f"{service}'s store is {url.split(':')[0]}, not PostgreSQL"


def test_a_service_with_a_database_reaches_it_at_the_overlays_address_and_no_other_does(production) -> None:
    secrets = of_kind(production, "Secret")
    for service in SERVICES:
        egress = network_rules(production, service, "egress")
        if service not in DATABASE_URLS:
            assert not [rule for rule in egress for port in rule.get("ports", []) if port["port"] == 5432], service
            continue
        assert f"caduceus-{service}-db" in secrets, f"the overlay makes no Secret caduceus-{service}-db"
        url = base64.b64decode(secrets[f"caduceus-{service}-db"]["data"]["url"]).decode()
        port = urlsplit(url).port or 5432
        to_database = [rule for rule in egress if {"protocol": "TCP", "port": port} in rule.get("ports", [])]
        assert to_database, f"{service}'s NetworkPolicy does not allow egress to its database on port {port}"
        assert [rule["to"] for rule in to_database] == [OVERLAY_DATABASE], \
            f"{service} reaches port {port} beyond the database's address the overlay sets: {to_database}"


def test_the_overlay_and_the_readme_name_every_file_an_operator_provides_and_edits() -> None:
    overlay = K8S / "overlays" / "production"
    text = (overlay / "kustomization.yaml").read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    spec = yaml.safe_load(text)
    generators = spec["configMapGenerator"] + spec["secretGenerator"]
    read = {entry.rpartition("=")[2] for gen in generators for entry in gen.get("files", []) + gen.get("envs", [])}
    # `caduceus deployment secrets` makes secrets/<service>/...; the operator writes the rest.
    provided = {path for path in read if not re.fullmatch(r"secrets/[^/]+/.+", path)}
    database_patches = {patch["path"] for patch in spec["patches"] if patch["path"].endswith("-database.yaml")}
    assert {f"secrets/{service}-db.env" for service in DATABASE_URLS} <= provided
    assert {f"{service}-database.yaml" for service in DATABASE_URLS} == database_patches
    production_section = README.read_text().split("## Running in production", 1)[1].split("\n## ", 1)[0]
    for path in sorted(provided | database_patches):
        assert path in header, f"the overlay's header comment does not name {path}"
        if path.endswith((".env", "-database.yaml")):
            assert path in production_section, f"README, Running in production, does not name {path}"


def test_nats_and_temporal_come_from_their_charts_at_the_versions_the_embedded_stack_runs() -> None:
    nats = yaml.safe_load((K8S / "helm" / "nats-values.yaml").read_text())
    assert nats["config"]["jetstream"]["enabled"] is True
    assert nats["config"]["cluster"] == {"enabled": True, "replicas": 3}
    assert nats["config"]["merge"]["$include"] == "./auth/server.conf"
    assert nats["container"]["image"]["tag"] == f"{engine_versions()['nats']}-alpine"
    temporal = yaml.safe_load((K8S / "helm" / "temporal-values.yaml").read_text())
    assert temporal["server"]["image"]["tag"] == engine_versions()["temporal"]
    assert temporal["web"]["image"]["tag"] == engine_versions()["temporal-ui"]
    assert all(temporal[store]["enabled"] is False for store in ("cassandra", "mysql", "postgresql", "elasticsearch"))
    assert {temporal["server"]["config"]["persistence"][store]["sql"]["driver"]
            for store in ("default", "visibility")} == {"postgres12"}


def test_on_the_production_bus_every_stream_and_bucket_has_a_copy_on_each_nats_server(production) -> None:
    """Losing a NATS node (a drain, a crash) loses no event, lease or used decision, and publishes wait it out."""
    servers = yaml.safe_load((K8S / "helm" / "nats-values.yaml").read_text())["config"]["cluster"]["replicas"]
    runtime = of_kind(production, "ConfigMap")["caduceus-runtime"]["data"]
    assert int(runtime.get("CADUCEUS_STREAM_REPLICAS", 1)) == min(3, servers)
    assert int(runtime.get("CADUCEUS_USED_DECISIONS_REPLICAS", 1)) == min(3, servers)
    assert float(runtime.get("CADUCEUS_PUBLISH_RETRY_S", 0)) >= 15, "a publish fails during a leader's election"
    for name, deployment in of_kind(production, "Deployment").items():
        assert {"configMapRef": {"name": "caduceus-runtime"}} in pod_spec(deployment)["containers"][0]["envFrom"], name


def test_the_renderer_merges_named_lists_by_name_and_replaces_others() -> None:
    base = {"containers": [{"name": "a", "image": "x", "env": [{"name": "A", "value": "1"}]}], "ports": [1, 2]}
    patch = {"containers": [{"name": "a", "env": [{"name": "B", "value": "2"}]}], "ports": [3]}
    assert merge(copy.deepcopy(base), patch) == {
        "containers": [{"name": "a", "image": "x", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}],
        "ports": [3]}
