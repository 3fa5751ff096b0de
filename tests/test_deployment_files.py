"""docker-compose.yml cannot run here (no Docker engine): check that it names only what exists.

Every service command must be a module this repository ships, and every CADUCEUS_ variable it sets
must be a setting some service reads; a typo in either would only show up on an operator's host.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import nats
import pytest
import yaml
from pydantic_settings import BaseSettings
from typer.testing import CliRunner

from caduceus.cli import app
from caduceus_approval.settings import ApprovalSettings
from caduceus_audit.settings import AuditSettings
from caduceus_broker.settings import BrokerSettings, ModelSettings, WorkerSettings
from caduceus_bus import BusSettings, load_permissions
from caduceus_embedded.binaries import engine_versions
from caduceus_embedded.ports import free_port
from caduceus_embedded.servers import start_nats
from caduceus_embedded.testing import connect_recording_errors
from caduceus_gateway.settings import GatewaySettings
from caduceus_identity.settings import IdentitySettings
from caduceus_inference.settings import InferenceSettings
from caduceus_mcp.settings import McpSettings
from caduceus_policy.settings import PolicySettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SETTINGS: list[type[BaseSettings]] = [ApprovalSettings, AuditSettings, BrokerSettings, ModelSettings, WorkerSettings,
                                      IdentitySettings, PolicySettings, GatewaySettings, McpSettings,
                                      InferenceSettings]


def known_variables() -> set[str]:
    names = set()
    for model in SETTINGS:
        prefix = model.model_config.get("env_prefix", "")
        names |= {f"{prefix}{field}".upper() for field in model.model_fields}
    return names


def caduceus_services() -> dict[str, dict]:
    return {name: spec for name, spec in COMPOSE["services"].items()
            if spec.get("image") == "caduceus:local" or "build" in spec}


def test_every_caduceus_service_runs_a_module_that_exists() -> None:
    services = caduceus_services()
    assert {"identity", "policy", "approval", "broker", "audit", "model", "inference"} <= set(services)
    for name, spec in services.items():
        command = spec["command"]
        assert command[:2] == ["python", "-m"], (name, command)
        assert importlib.util.find_spec(command[2]) is not None, f"{name} runs {command[2]}, which does not exist"


def test_every_caduceus_variable_is_a_setting_some_service_reads() -> None:
    known = known_variables()
    for name, spec in caduceus_services().items():
        unknown = {key for key in spec.get("environment", {}) if key.startswith("CADUCEUS_")} - known
        assert not unknown, f"{name} sets {sorted(unknown)}, which no service reads"


def test_services_reach_the_engines_by_their_compose_names() -> None:
    for name, spec in nats_services().items():
        env = spec.get("environment", {})
        assert env.get("CADUCEUS_NATS_URL") == "nats://nats:4222", name
    services = COMPOSE["services"]
    assert services["approval"]["environment"]["CADUCEUS_TEMPORAL_ADDRESS"] == "temporal:7233"
    assert services["broker"]["environment"]["CADUCEUS_MODEL_BASE_URL"] == "http://inference:8905/v1"
    assert "http://model:8901/v1" in services["inference"]["environment"]["CADUCEUS_INFERENCE_UPSTREAMS"]


def database_url_variables() -> dict[str, str]:
    """Each compose service's database URL variable: every `*_db_url` setting of its package (a store of its own)."""
    return {model.__module__.split(".")[0].removeprefix("caduceus_"): f"{model.model_config['env_prefix']}{field}".upper()
            for model in SETTINGS for field in model.model_fields if field.endswith("db_url")}


def test_every_store_is_in_the_one_postgresql_and_waits_for_it() -> None:
    """Compose runs one PostgreSQL; a store left on SQLite would be the only one a second replica could not share."""
    variables = database_url_variables()
    assert variables.items() >= {"audit": "CADUCEUS_AUDIT_DB_URL", "identity": "CADUCEUS_IDENTITY_DB_URL",
                                 "gateway": "CADUCEUS_GATEWAY_DB_URL", "mcp": "CADUCEUS_PINS_DB_URL"}.items()
    services = COMPOSE["services"]
    database = services["postgres"]["environment"]
    expected = (f"postgresql+psycopg2://{database['POSTGRES_USER']}:{database['POSTGRES_PASSWORD']}"
                f"@postgres:5432/{database['POSTGRES_DB']}")
    for name, variable in variables.items():
        assert services[name]["environment"].get(variable) == expected, f"{name} does not keep its store in postgres"
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy", name
        assert services[name]["depends_on"]["nats"]["condition"] == "service_healthy", name


def nats_services() -> dict[str, dict]:
    """The Caduceus services that connect to the bus (every one but the scripted model)."""
    return {name: spec for name, spec in caduceus_services().items() if name != "model"}


def own_directory(name: str, spec: dict) -> str:
    """The .deploy directory a service mounts as its keys directory (made by `caduceus deployment secrets`)."""
    keys_dir = spec["environment"]["CADUCEUS_KEYS_DIR"]
    (source,) = [volume.split(":")[0] for volume in spec["volumes"] if volume.split(":")[1] == keys_dir]
    return source


def test_each_service_mounts_only_its_own_keys_and_bus_credential_where_its_settings_look() -> None:
    roles = load_permissions().services
    for name, spec in nats_services().items():
        env = spec["environment"]
        assert own_directory(name, spec) == f"./.deploy/{name}", f"{name} does not mount its own directory"
        assert env["CADUCEUS_NATS_CREDENTIALS"] == f"{env['CADUCEUS_KEYS_DIR']}/bus.creds"
        assert name in roles, f"{name} has no role in infra/nats/permissions.yaml"
        foreign = [v for v in spec["volumes"] if v.startswith("./.deploy/") and v.split(":")[0] != f"./.deploy/{name}"]
        assert not foreign, f"{name} mounts {foreign}"
    broker = nats_services()["broker"]["environment"]
    assert broker["CADUCEUS_NATS_WORKER_SIGNING"] == f"{broker['CADUCEUS_KEYS_DIR']}/worker-signing.json"
    assert "./.deploy/nats/server.conf:/etc/nats/auth/server.conf:ro" in COMPOSE["services"]["nats"]["volumes"]
    assert "include ./auth/server.conf" in (ROOT / "infra/nats/nats.conf").read_text()


def test_no_service_shares_a_volume_so_none_can_read_another_services_private_key(tmp_path: Path) -> None:
    made = CliRunner().invoke(app, ["deployment", "secrets", "--out", str(tmp_path)])
    assert made.exit_code == 0, made.output
    users: dict[str, set[str]] = {}
    for name, spec in COMPOSE["services"].items():
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("./") or source.startswith("./.deploy/"):
                users.setdefault(source, set()).add(name)
    shared = {source: names for source, names in users.items() if len(names) > 1}
    assert not shared, f"volumes several services mount: {shared}"
    for name, spec in nats_services().items():
        visible = {path.name for path in (tmp_path / own_directory(name, spec).removeprefix("./.deploy/")).iterdir()}
        private = {key for key in visible if key.endswith(".key")}
        assert private <= {f"{name}.key", "approval-desk.key"}, f"{name} can read {sorted(private)}"
        assert "approval-desk.key" not in private or name == "approval"
    broker = {path.name for path in (tmp_path / "broker").iterdir()}
    assert not {key for key in broker if key.endswith((".key", ".secret", ".pem"))}, "the broker holds a private key"


def test_engines_run_the_versions_the_embedded_stack_runs_on_current_images() -> None:
    versions = engine_versions()
    services = COMPOSE["services"]
    assert services["temporal"]["image"] == f"temporalio/server:{versions['temporal']}"
    assert services["temporal-ui"]["image"] == f"temporalio/ui:{versions['temporal-ui']}"
    assert services["temporal-schema"]["image"] == f"temporalio/admin-tools:{versions['temporal']}"
    assert services["nats"]["image"] == f"nats:{versions['nats']}-alpine"
    assert not [name for name, spec in services.items() if "auto-setup" in spec.get("image", "")], \
        "temporalio/auto-setup is deprecated"
    assert services["temporal"]["depends_on"]["temporal-schema"]["condition"] == "service_completed_successfully"
    assert services["approval"]["depends_on"]["temporal-namespace"]["condition"] == "service_completed_successfully"
    assert (ROOT / "infra/temporal/setup-schema.sh").exists()


def test_the_broker_is_confined_by_shipped_profiles_not_unconfined() -> None:
    options = COMPOSE["services"]["broker"]["security_opt"]
    assert not [option for option in options if "unconfined" in option and not option.startswith("systempaths")]
    assert "no-new-privileges:true" in options
    (seccomp,) = [option.split("=", 1)[1] for option in options if option.startswith("seccomp=")]
    assert json.loads((ROOT / seccomp).read_text())["defaultAction"] == "SCMP_ACT_ERRNO"
    (apparmor,) = [option.split("=", 1)[1] for option in options if option.startswith("apparmor=")]
    assert f"profile {apparmor} " in (ROOT / "infra/sandbox/apparmor-caduceus-broker").read_text()
    for name, spec in caduceus_services().items():
        assert spec.get("read_only") is True and spec.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in spec["security_opt"], name


async def test_the_deployment_bus_from_caduceus_deployment_secrets_admits_each_service_to_its_own_subjects_only(
        tmp_path: Path) -> None:
    written = CliRunner().invoke(app, ["deployment", "secrets", "--out", str(tmp_path / "deploy")])
    assert written.exit_code == 0, written.output
    # infra/nats/nats.conf as docker-compose runs it, with this machine's paths and ports.
    # (start_nats gives the store dir and port on its command line)
    config = (ROOT / "infra/nats/nats.conf").read_text().replace("store_dir: /data/jetstream", "")
    config = config.replace("http_port: 8222", f"http_port: {free_port()}")
    (tmp_path / "nats.conf").write_text(config)
    port = free_port()
    (tmp_path / "auth").mkdir()
    (tmp_path / "auth" / "server.conf").write_bytes((tmp_path / "deploy" / "nats" / "server.conf").read_bytes())
    server = start_nats(port, tmp_path / "js", tmp_path / "nats.log", config_file=tmp_path / "nats.conf")
    url = f"nats://127.0.0.1:{port}"
    try:
        with pytest.raises(Exception, match="(?i)authorization"):
            await nats.connect(url, allow_reconnect=False, connect_timeout=2)
        policy, identity = [await connect_recording_errors(url, BusSettings(nats_url=url, nats_credentials=path))
                            for path in (tmp_path / "deploy" / "policy" / "bus.creds",
                                         tmp_path / "deploy" / "identity" / "bus.creds")]
        await policy.nc.publish("cad.v1.tool.decided.acme", b"{}")
        await identity.nc.publish("cad.v1.tool.decided.acme", b"{}")
        assert await policy.violations() == []
        assert await identity.violations(), "identity could publish a decision on the deployment's bus"
        for client in (policy, identity):
            await client.nc.close()
        healthy = subprocess.run([sys.executable, str(ROOT / "infra/docker/healthcheck.py"), "policy"],
                                 env={**os.environ, "CADUCEUS_NATS_URL": url,
                                      "CADUCEUS_NATS_CREDENTIALS": str(tmp_path / "deploy" / "policy" / "bus.creds")},
                                 capture_output=True, text=True, timeout=30)
        # Nobody answers policy's health here: the check fails as "not answering", not as a permission error.
        assert healthy.returncode == 1 and "not answering" in healthy.stderr and "ermission" not in healthy.stderr
    finally:
        server.stop()


def test_making_the_deployment_secrets_again_keeps_every_key_and_credential(tmp_path: Path) -> None:
    """Operators run it again after an upgrade: signatures and bus credentials already handed out stay valid."""
    first = CliRunner().invoke(app, ["deployment", "secrets", "--out", str(tmp_path)])
    assert first.exit_code == 0, first.output
    before = {path.relative_to(tmp_path): path.read_bytes() for path in tmp_path.glob("*/*.key")}
    before |= {path.relative_to(tmp_path): path.read_bytes() for path in tmp_path.glob("authority/bus/*.nk")}
    again = CliRunner().invoke(app, ["deployment", "secrets", "--out", str(tmp_path)])
    assert again.exit_code == 0, again.output
    assert {path: (tmp_path / path).read_bytes() for path in before} == before
    assert len([path for path in before if path.suffix == ".key"]) >= 5
    assert all(oct(path.stat().st_mode & 0o777) == "0o600" for path in tmp_path.glob("*/*") if path.is_file())
