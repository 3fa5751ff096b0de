"""docker-compose.yml cannot run here (no Docker engine): check that it names only what exists.

Every service command must be a module this repository ships, and every CADUCEUS_ variable it sets
must be a setting some service reads; a typo in either would only show up on an operator's host.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml
from pydantic_settings import BaseSettings

from caduceus_approval.settings import ApprovalSettings
from caduceus_audit.settings import AuditSettings
from caduceus_broker.settings import BrokerSettings, ModelSettings, WorkerSettings
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
