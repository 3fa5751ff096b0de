"""docker-compose.yml cannot run here (no Docker engine): check that it names only what exists.

Every service command must be a module this repository ships, and every CADUCEUS_ variable it sets
must be a setting some service reads; a typo in either would only show up on an operator's host.
"""

from __future__ import annotations

import importlib.util
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
from caduceus_embedded.ports import free_port
from caduceus_embedded.servers import start_nats
from caduceus_embedded.testing import connect_recording_errors
from caduceus_identity.settings import IdentitySettings
from caduceus_policy.settings import PolicySettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SETTINGS: list[type[BaseSettings]] = [ApprovalSettings, AuditSettings, BrokerSettings, ModelSettings, WorkerSettings,
                                      IdentitySettings, PolicySettings]


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
    assert {"identity", "policy", "approval", "broker", "audit", "model"} <= set(services)
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
    for name, spec in caduceus_services().items():
        env = spec.get("environment", {})
        assert env.get("CADUCEUS_NATS_URL") == "nats://nats:4222", name
    anchor = COMPOSE["x-service"]["environment"]
    assert "@postgres:5432/" in anchor["CADUCEUS_AUDIT_DB_URL"]
    assert anchor["CADUCEUS_TEMPORAL_ADDRESS"] == "temporal:7233"
    assert anchor["CADUCEUS_MODEL_BASE_URL"].endswith("model:8901/v1}")


def nats_services() -> dict[str, dict]:
    """The Caduceus services that connect to the bus (every one but the scripted model)."""
    return {name: spec for name, spec in caduceus_services().items() if name != "model"}


def test_each_service_mounts_only_its_own_bus_credential_where_its_settings_look() -> None:
    roles = load_permissions().services
    for name, spec in nats_services().items():
        path = spec["environment"]["CADUCEUS_NATS_CREDENTIALS"]
        mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in spec["volumes"]}
        assert mounts.get(path) == f"./.bus/{name}.creds", f"{name} does not mount its own credential at {path}"
        assert name in roles, f"{name} has no role in infra/nats/permissions.yaml"
        assert not [v for v in spec["volumes"] if v.startswith("./.bus/") and name not in v
                    and "worker-signing" not in v], f"{name} mounts another service's credential"
    broker = nats_services()["broker"]
    assert f"./.bus/worker-signing.json:{broker['environment']['CADUCEUS_NATS_WORKER_SIGNING']}:ro" in broker["volumes"]
    nats_mounts = COMPOSE["services"]["nats"]["volumes"]
    assert "./.bus/server.conf:/etc/nats/auth/server.conf:ro" in nats_mounts
    assert "include ./auth/server.conf" in (ROOT / "infra/nats/nats.conf").read_text()


async def test_the_deployment_bus_from_caduceus_bus_authority_admits_each_service_to_its_own_subjects_only(
        tmp_path: Path) -> None:
    written = CliRunner().invoke(app, ["bus", "authority", "--out", str(tmp_path / "auth")])
    assert written.exit_code == 0, written.output
    # infra/nats/nats.conf as docker-compose runs it, with this machine's paths and ports.
    # (start_nats gives the store dir and port on its command line)
    config = (ROOT / "infra/nats/nats.conf").read_text().replace("store_dir: /data/jetstream", "")
    config = config.replace("http_port: 8222", f"http_port: {free_port()}")
    (tmp_path / "nats.conf").write_text(config)
    port = free_port()
    server = start_nats(port, tmp_path / "js", tmp_path / "nats.log", config_file=tmp_path / "nats.conf")
    url = f"nats://127.0.0.1:{port}"
    try:
        with pytest.raises(Exception, match="(?i)authorization"):
            await nats.connect(url, allow_reconnect=False, connect_timeout=2)
        policy, identity = [await connect_recording_errors(url, BusSettings(nats_url=url, nats_credentials=path))
                            for path in (tmp_path / "auth" / "policy.creds", tmp_path / "auth" / "identity.creds")]
        await policy.nc.publish("cad.v1.tool.decided.acme", b"{}")
        await identity.nc.publish("cad.v1.tool.decided.acme", b"{}")
        assert await policy.violations() == []
        assert await identity.violations(), "identity could publish a decision on the deployment's bus"
        for client in (policy, identity):
            await client.nc.close()
        healthy = subprocess.run([sys.executable, str(ROOT / "infra/docker/healthcheck.py"), "policy"],
                                 env={**os.environ, "CADUCEUS_NATS_URL": url,
                                      "CADUCEUS_NATS_CREDENTIALS": str(tmp_path / "auth" / "policy.creds")},
                                 capture_output=True, text=True, timeout=30)
        # Nobody answers policy's health here: the check fails as "not answering", not as a permission error.
        assert healthy.returncode == 1 and "not answering" in healthy.stderr and "ermission" not in healthy.stderr
    finally:
        server.stop()
