"""`caduceus up --replicas N`: the table of processes, their ports, and what stays single (no servers started)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from caduceus.cli import app
from caduceus_embedded.layout import StateLayout
from caduceus_embedded.ports import SERVICE_HTTP_ORDER, PortBusy, StackPorts
from caduceus_embedded.services import SINGLE_INSTANCE, default_services
from caduceus_embedded.settings import ModelSettings
from caduceus_embedded.stackinfo import read_stack_info


@pytest.fixture()
def scripted(monkeypatch: pytest.MonkeyPatch) -> ModelSettings:
    monkeypatch.delenv("CADUCEUS_MODEL_BASE_URL", raising=False)
    return ModelSettings()


def test_two_replicas_run_every_service_twice_the_broker_too_but_not_the_model(tmp_path: Path, scripted) -> None:
    table = default_services(StateLayout(tmp_path), StackPorts.free(2), scripted, replicas=2)
    keys = [spec.key for spec in table]
    assert len(keys) == len(set(keys))
    for name in SERVICE_HTTP_ORDER:
        expected = [name] if name in SINGLE_INSTANCE else [name, f"{name}-2"]
        assert [spec.key for spec in table if spec.name == name] == expected
    assert [spec.key for spec in table if spec.name == "broker"] == ["broker", "broker-2"]
    assert [spec.key for spec in table if spec.name == "model"] == ["model"]


def test_broker_replicas_share_the_workspaces_and_worker_homes_and_each_has_its_own_health_port(
        tmp_path: Path, scripted) -> None:
    """A workspace's files and its planner's memory must be there for whichever broker takes it over; only the
    lease owner runs a workspace's pair, so sharing them never puts two pairs on one home."""
    ports = StackPorts.free(2)
    brokers = [spec for spec in default_services(StateLayout(tmp_path), ports, scripted, replicas=2)
               if spec.name == "broker"]
    assert {spec.env["CADUCEUS_WORKSPACES_DIR"] for spec in brokers} == {str(StateLayout(tmp_path).workspaces)}
    assert {spec.env["CADUCEUS_WORKERS_DIR"] for spec in brokers} == {str(StateLayout(tmp_path).workers)}
    assert [spec.env["CADUCEUS_HTTP_PORT"] for spec in brokers] == [
        str(ports.http_port("broker", r)) for r in (1, 2)]
    assert [spec.ready_url for spec in brokers] == [
        f"http://127.0.0.1:{ports.http_port('broker', r)}/readyz" for r in (1, 2)]


def test_each_replica_has_its_own_health_port_and_all_share_the_web_ports(tmp_path: Path, scripted) -> None:
    ports = StackPorts.free(3)
    table = default_services(StateLayout(tmp_path), ports, scripted, replicas=3)
    health = [spec.env["CADUCEUS_HTTP_PORT"] for spec in table if "CADUCEUS_HTTP_PORT" in spec.env]
    assert len(health) == len(set(health)) == 3 * len(SERVICE_HTTP_ORDER)
    # the other ports of the stack are never one of the health ports
    assert not {str(getattr(ports, name)) for name in ("nats", "temporal", "approval_ui", "webchat", "inference")
                } & set(health)
    approvals = [spec for spec in table if spec.name == "approval"]
    assert {spec.env["CADUCEUS_UI_PORT"] for spec in approvals} == {str(ports.approval_ui)}
    assert all(spec.env["CADUCEUS_SHARED_PORTS"] == "true" for spec in approvals)
    # each replica is waited for on its own /readyz: the bus health request is answered by any one of them
    assert [spec.ready_url for spec in approvals] == [
        f"http://127.0.0.1:{ports.http_port('approval', r)}/readyz" for r in (1, 2, 3)]


def test_only_the_first_identity_serves_the_dev_issuer(tmp_path: Path, scripted) -> None:
    table = default_services(StateLayout(tmp_path), StackPorts.free(2), scripted, replicas=2)
    identities = {spec.key: spec.env for spec in table if spec.name == "identity"}
    assert "CADUCEUS_DEV_ISSUER_PORT" in identities["identity"]
    assert identities["identity"]["CADUCEUS_DEV_ISSUER_PORT"] != "0"
    assert identities["identity-2"]["CADUCEUS_DEV_ISSUER_PORT"] == "0"


def test_one_replica_is_the_table_it_always_was(tmp_path: Path, scripted) -> None:
    ports = StackPorts.free()
    table = default_services(StateLayout(tmp_path), ports, scripted)
    assert all(spec.replica == 1 and spec.key == spec.name for spec in table)
    assert not any("CADUCEUS_SHARED_PORTS" in spec.env for spec in table)


def test_a_busy_health_port_of_the_second_replica_is_named_before_anything_starts() -> None:
    ports = StackPorts.free(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports.http_port("policy", 2)))
        taken.listen()
        ports.check(replicas=1)  # one replica does not need it
        with pytest.raises(PortBusy, match="--http-port"):
            ports.check(replicas=2)


@pytest.mark.parametrize("replicas", ["0", "-1"])
def test_up_refuses_fewer_than_one_replica(replicas: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["up", "--state-dir", str(tmp_path), "--replicas", replicas])
    assert result.exit_code == 2
    assert "--replicas" in result.output


@pytest.mark.timeout(240)
def test_up_with_two_replicas_on_a_nats_cluster_lists_each_and_ctrl_c_stops_them_all(tmp_path: Path) -> None:
    """The highly available layout on one machine, as an operator starts it."""
    state = tmp_path / "state"
    ports = StackPorts.free(2)
    up = subprocess.Popen(
        [sys.executable, "-m", "caduceus.cli", "up", "--replicas", "2", "--nats-nodes", "3", "--state-dir", str(state),
         "--nats-port", str(ports.nats), "--temporal-port", str(ports.temporal),
         "--temporal-ui-port", str(ports.temporal_ui), "--issuer-port", str(ports.issuer),
         "--model-port", str(ports.model), "--webchat-port", str(ports.webchat),
         "--approval-ui-port", str(ports.approval_ui), "--mcp-port", str(ports.mcp_endpoint),
         "--inference-port", str(ports.inference), "--http-port", str(ports.http)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={k: v for k, v in os.environ.items() if k != "CADUCEUS_MODEL_BASE_URL"})
    output = ""
    try:
        deadline = time.monotonic() + 180
        while read_stack_info(state) is None:
            assert up.poll() is None and time.monotonic() < deadline, up.communicate()[0]
            time.sleep(0.2)
        status = CliRunner().invoke(app, ["status", "--state-dir", str(state), "--json"])
        assert status.exit_code == 0, status.output
        shown = json.loads(status.stdout)
        listed = {s["name"]: s["pid"] for s in shown["services"]}
        nats_ports = [int(url.rsplit(":", 1)[1]) for url in shown["nats"]]
        assert len(nats_ports) == 3 and nats_ports[0] == ports.nats, shown["nats"]
        for port in nats_ports:  # three nodes, each taking clients
            with socket.create_connection(("127.0.0.1", port), timeout=5) as node:
                assert node.recv(4).startswith(b"INFO")
        replicated = [name for name in SERVICE_HTTP_ORDER if name not in SINGLE_INSTANCE]
        assert set(listed) == {"model", *replicated, *(f"{name}-2" for name in replicated)}
        assert "broker-2" in listed
        # each replica answers on its own health port
        for name in replicated:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports.http_port(name, 2)}/readyz", timeout=5) as ready:
                assert ready.status == 200
        pids = set(listed.values())
        up.send_signal(signal.SIGINT)
        output, _ = up.communicate(timeout=90)
    finally:
        if up.poll() is None:  # a failed assertion: stop the stack the way an operator would, so nothing is left
            up.send_signal(signal.SIGINT)
            try:
                up.communicate(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
    assert up.returncode == 0, output
    assert "policy-2" in output and "stopped" in output
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()], "replicas outlived caduceus up"
    for port in nats_ports:
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"nats node on {port} still answers"
