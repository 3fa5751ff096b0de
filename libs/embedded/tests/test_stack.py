"""The embedded stack, run for real: nats-server, the Temporal dev server and stand-in services."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import nats
import pytest
from typer.testing import CliRunner

import caduceus_embedded
from caduceus.cli import app
from caduceus_audit import AuditStore
from caduceus_audit.app import build
from caduceus_audit.settings import AuditSettings
from caduceus_audit.testing import running
from caduceus_bus import auth_options, load_permissions
from caduceus_bus.permissions import Role
from caduceus_contracts import subjects
from caduceus_embedded.layout import StateLayout
from caduceus_embedded.ports import PortBusy, StackPorts, free_port, wait_for_port
from caduceus_embedded.services import ServiceFailed, ServiceSpec, default_services
from caduceus_embedded.settings import ModelSettings
from caduceus_embedded.stack import EmbeddedStack
from caduceus_embedded.stackinfo import (
    STACK_FILE,
    StackInfo,
    read_stack_info,
    write_stack_info,
)

T = TypeVar("T")
TESTS_DIR = Path(__file__).parent
DEFAULTS = Path(caduceus_embedded.__file__).parent / "defaults"
EXTERNAL_MODEL = ModelSettings(base_url="http://127.0.0.1:9/v1", api_key="k", name="m")


SHIPPED = load_permissions()
STANDINS = ("alpha", "beta", "broken")
# The shipped operator and client roles, plus one role per stand-in (its health, its crash switch) and
# a tester that may throw the switches.
PERMISSIONS = SHIPPED.model_copy(update={"services": {
    "operator": SHIPPED.services["operator"], "client": SHIPPED.services["client"],
    "audit": SHIPPED.services["audit"],
    **{name: Role(subscribe=(f"caduceus.health.{name}", f"standin.crash.{name}")) for name in STANDINS},
    "tester": Role(publish=("standin.crash.*", "caduceus.health.*")),
}})


async def connect(stack: EmbeddedStack, role: str = "tester") -> nats.aio.client.Client:
    settings = stack.bus_settings(role)
    return await nats.connect(settings.nats_url, **auth_options(settings))


def standin(name: str, mode: str = "ok") -> ServiceSpec:
    return ServiceSpec(name, "standin_service",
                       {"STANDIN_NAME": name, "STANDIN_MODE": mode, "PYTHONPATH": str(TESTS_DIR)})


def make_stack(state_dir: Path, *services: ServiceSpec, ports: StackPorts | None = None,
               problems: list[str] | None = None, crash_loop_s: float = 30.0, nats_nodes: int = 1) -> EmbeddedStack:
    return EmbeddedStack(state_dir, ports or StackPorts.free(), services=list(services), model=EXTERNAL_MODEL,
                         ready_timeout=20, stop_grace=5, crash_loop_s=crash_loop_s, nats_nodes=nats_nodes,
                         on_problem=problems.append if problems is not None else None, bus_permissions=PERMISSIONS)


def child_pids() -> set[int]:
    """Live processes whose parent is this test process."""
    me, found = os.getpid(), set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def port_answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def stream_messages(stack: EmbeddedStack) -> int:
    nc = await connect(stack, "operator")
    try:
        return (await nc.jetstream().stream_info("CADUCEUS")).state.messages
    finally:
        await nc.close()


async def test_running_stack_advertises_itself_and_stops_without_leftovers(tmp_path: Path) -> None:
    before = child_pids()
    ports = StackPorts.free()
    state = tmp_path / "state"
    with make_stack(state, standin("alpha"), standin("beta"), ports=ports) as stack:
        advertised = read_stack_info(state)
        assert advertised == stack.info
        assert advertised.nats_url == f"nats://127.0.0.1:{ports.nats}"
        assert advertised.temporal_address == f"127.0.0.1:{ports.temporal}"
        assert advertised.temporal_ui_url == f"http://127.0.0.1:{ports.temporal_ui}"
        assert advertised.dev_issuer_url == f"http://127.0.0.1:{ports.issuer}"
        assert advertised.model_base_url == "http://127.0.0.1:9/v1"
        assert advertised.audit_db_url == f"sqlite:///{state.resolve() / 'audit.db'}"
        assert set(advertised.services) == {"alpha", "beta"}
        assert await stream_messages(stack) == 0
        assert Path(advertised.client_credentials) == state.resolve() / "keys" / "nats" / "client.creds"
        assert Path(advertised.client_credentials).stat().st_mode & 0o777 == 0o600
        with pytest.raises(Exception, match="(?i)authorization violation"):
            await nats.connect(advertised.nats_url, allow_reconnect=False, max_reconnect_attempts=0)
        assert port_answers(ports.temporal)
        for sub in ("nats", "temporal", "keys", "logs", "workspaces", "workers"):
            assert (state / sub).is_dir()
        assert (state / "logs" / "alpha.log").read_text().strip().endswith("ready")
        assert len(child_pids() - before) == 4  # nats, temporal, two services
    assert not (state / STACK_FILE).exists()
    assert child_pids() - before == set()
    assert not port_answers(ports.nats) and not port_answers(ports.temporal)


async def test_restarted_stack_continues_where_it_stopped(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "policy.yaml").write_text("# the operator's own policy\n")
    ports = StackPorts.free()
    with make_stack(state, standin("alpha"), ports=ports) as stack:
        nc = await connect(stack, "client")
        await nc.jetstream().publish("cad.v1.chat.in.acme", b'{"before": "restart"}')
        await nc.close()
        policy_key = (state / "keys" / "policy.key").read_bytes()
    with make_stack(state, standin("alpha"), ports=ports) as stack:
        assert await stream_messages(stack) == 1
        assert (state / "keys" / "policy.key").read_bytes() == policy_key
        assert (state / "policy.yaml").read_text() == "# the operator's own policy\n"
        assert (state / "temporal" / "temporal.db").stat().st_size > 0


def test_busy_port_is_refused_naming_its_flag(tmp_path: Path) -> None:
    with busy_port() as port:
        stack = make_stack(tmp_path / "state", standin("alpha"), ports=replace(StackPorts.free(), temporal_ui=port))
        with pytest.raises(PortBusy, match=f"port {port} .*--temporal-ui-port"):
            stack.start()
    assert not (tmp_path / "state").exists()


def test_same_port_twice_is_refused(tmp_path: Path) -> None:
    free = StackPorts.free()
    stack = make_stack(tmp_path / "state", ports=StackPorts(free.nats, free.nats, free.temporal_ui, free.issuer))
    with pytest.raises(PortBusy, match="--nats-port and --temporal-port both ask for port"):
        stack.start()


def test_service_that_exits_at_start_fails_the_start_with_its_log_tail(tmp_path: Path) -> None:
    before = child_pids()
    state = tmp_path / "state"
    stack = make_stack(state, standin("alpha"), standin("broken", mode="exit"))
    with pytest.raises(ServiceFailed) as failure:
        stack.start()
    message = str(failure.value)
    assert "service broken exited with code 3 while starting" in message
    assert str(state.resolve() / "logs" / "broken.log") in message
    assert "cannot open its database, giving up" in message
    assert not (state / STACK_FILE).exists()
    assert child_pids() - before == set()


def slow_bus(name: str, count: Path, failures: int) -> ServiceSpec:
    spec = standin(name, mode="slow-bus")
    return replace(spec, env={**spec.env, "STANDIN_COUNT": str(count), "STANDIN_FAILURES": str(failures)})


def test_a_service_whose_bus_timed_out_while_starting_is_started_again(tmp_path: Path) -> None:
    """Everything starting at once on a busy machine (a NATS cluster creating its replicated buckets, say): a
    service whose bus request timed out exits 1, and the stack starts it again instead of giving up."""
    problems: list[str] = []
    count = tmp_path / "alpha-failures"
    with make_stack(tmp_path / "state", slow_bus("alpha", count, failures=2), problems=problems) as stack:
        assert stack.services["alpha"].exit_code() is None and count.read_text() == "2"
    said = [line for line in problems if "alpha exited with code 1 while starting (standin alpha stopped: nats: "
            "timeout); starting it again" in line]
    assert len(said) == 2, problems


def test_a_service_that_keeps_failing_while_starting_fails_the_start(tmp_path: Path) -> None:
    before = child_pids()
    stack = make_stack(tmp_path / "state", standin("alpha"), slow_bus("beta", tmp_path / "count", failures=99),
                       problems=[])
    with pytest.raises(ServiceFailed, match="service beta exited with code 1 while starting"):
        stack.start()
    assert (tmp_path / "count").read_text() == "3"  # the first start and two more
    assert child_pids() - before == set()


async def test_a_crashed_service_is_restarted_but_a_crash_loop_is_left_down(tmp_path: Path) -> None:
    problems: list[str] = []
    with make_stack(tmp_path / "state", standin("alpha"), problems=problems) as stack:
        nc = await connect(stack)
        try:
            first_pid = stack.info.services["alpha"]
            await nc.publish("standin.crash.alpha", b"")
            second_pid = await until(lambda: read_stack_info(tmp_path / "state").services["alpha"] != first_pid)
            assert (await nc.request("caduceus.health.alpha", b"", timeout=2)).data == b"ok"
            assert any("alpha exited unexpectedly with code 5" in line and "alpha.log" in line for line in problems)
            assert second_pid

            await nc.publish("standin.crash.alpha", b"")
            await until(lambda: any("alpha exited again with code 5" in line for line in problems))
            # Left down the second time: the stack says so, and the process it has is the one that exited.
            await until(lambda: "alpha" in read_stack_info(tmp_path / "state").down)
            assert stack.services["alpha"].exit_code() == 5
        finally:
            await nc.close()


async def test_a_service_left_down_shows_in_status_and_is_audited_as_an_error_event(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with make_stack(state, standin("alpha"), standin("beta"), problems=[]) as stack:
        nc = await connect(stack)
        try:
            first_pid = stack.info.services["alpha"]
            await nc.publish("standin.crash.alpha", b"")
            await until(lambda: read_stack_info(state).services["alpha"] != first_pid)
            await nc.publish("standin.crash.alpha", b"")
            down = await until(lambda: read_stack_info(state).down)
        finally:
            await nc.close()
        assert list(down) == ["alpha"] and "exited again with code 5" in down["alpha"] and "alpha.log" in down["alpha"]
        shown = CliRunner().invoke(app, ["status", "--state-dir", str(state)])
        assert shown.exit_code == 1, shown.output
        said = " ".join(shown.stdout.split())
        assert "alpha" in said and "DOWN" in said and "1 service(s) down" in said

        # The audit service, back (here: started now), stores the report the stack left on the stream.
        store = AuditStore(f"sqlite:///{tmp_path}/audit.db")
        audit = AuditSettings(nats_url=stack.nats_url, nats_credentials=stack.layout.bus_credentials("audit"),
                              state_dir=tmp_path / "audit", audit_db_url=str(store.url), audit_fetch_timeout_s=0.1)
        async with running(build(audit)):
            await until_async(lambda: asyncio.to_thread(store.count, subjects.SYSTEM_TENANT), timeout=15)
        (reported,) = store.records(tenant=subjects.SYSTEM_TENANT)
        assert (reported.kind, reported.subject, reported.rejected) == ("error", "cad.v1.error._system.stack", False)
        assert "service alpha is down" in reported.body and "caduceus.health.alpha" in reported.body


async def test_a_service_that_ran_a_while_is_restarted_every_time_it_dies(tmp_path: Path) -> None:
    with make_stack(tmp_path / "state", standin("alpha"), crash_loop_s=1.0) as stack:
        nc = await connect(stack)
        try:
            pids = [stack.info.services["alpha"]]
            for _ in range(2):
                await asyncio.sleep(1.5)  # up longer than the crash-loop window
                await nc.publish("standin.crash.alpha", b"")
                pids.append(await until(lambda: (pid := read_stack_info(tmp_path / "state").services["alpha"])
                                        not in pids and pid))
                assert (await nc.request("caduceus.health.alpha", b"", timeout=5)).data == b"ok"
            assert len(set(pids)) == 3
        finally:
            await nc.close()


async def until_async(condition: Callable[[], Awaitable[T]], timeout: float = 15.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := await condition():
            return result
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


async def until(condition: Callable[[], T], timeout: float = 15.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_up_with_a_busy_port_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    free = StackPorts.free()
    with busy_port() as port:
        result = run_up(tmp_path / "state", "--nats-port", str(free.nats), "--temporal-port", str(port),
                        "--temporal-ui-port", str(free.temporal_ui), "--issuer-port", str(free.issuer),
                        "--model-port", str(free.model))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"port {port}" in lines[0] and "--temporal-port" in lines[0]


def test_up_refuses_a_state_dir_where_a_stack_runs(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    write_stack_info(StackInfo(state_dir=str(state), pid=os.getpid(), nats_url="nats://127.0.0.1:1",
                               dev_issuer_url="", temporal_address="", temporal_ui_url="", model_base_url="",
                               audit_db_url=""))
    result = run_up(state)
    assert result.returncode == 2  # a usage error: another state dir, or the running stack, is what to use
    assert "already running" in result.stderr


@pytest.mark.parametrize(("url", "said"), [
    ("sqlite:///somewhere.db", "must name a PostgreSQL database"),
    ("postgresql+psycopg2://caduceus:hunter2@127.0.0.1:{closed}/caduceus", "cannot use the database"),
    ("not a url at all", "is not a database URL"),
])
def test_up_refuses_a_database_it_cannot_use_before_starting_anything(tmp_path: Path, url: str, said: str) -> None:
    """A wrong --database-url is one error naming the database (never its password), exit 2, and it is not kept."""
    free = StackPorts.free()
    result = run_up(tmp_path / "state", "--database-url", url.format(closed=free_port()),  # refused at once
                    *(arg for flag, port in (("--nats-port", free.nats), ("--temporal-port", free.temporal),
                                             ("--temporal-ui-port", free.temporal_ui),
                                             ("--issuer-port", free.issuer), ("--model-port", free.model),
                                             ("--approval-ui-port", free.approval_ui),
                                             ("--webchat-port", free.webchat), ("--mcp-port", free.mcp_endpoint),
                                             ("--inference-port", free.inference), ("--http-port", free.http))
                      for arg in (flag, str(port))))
    assert result.returncode == 2, result.stdout + result.stderr
    assert said in result.stderr and "hunter2" not in result.stdout + result.stderr
    assert StateLayout(tmp_path / "state").database_url is None
    assert "nats-server" not in result.stdout  # nothing started past the check


def run_up(state_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "caduceus.cli", "up", "--state-dir", str(state_dir), *args],
                          capture_output=True, text=True, timeout=60)


def test_without_a_model_endpoint_the_stack_serves_the_scripted_model(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path) -> None:
    monkeypatch.delenv("CADUCEUS_MODEL_BASE_URL", raising=False)
    state = tmp_path / "state"
    ports = StackPorts.free()
    model = default_services(StateLayout(state.resolve()), ports, ModelSettings())[0]
    stack = EmbeddedStack(state, ports, services=[model, standin("alpha")], ready_timeout=20, stop_grace=5,
                          bus_permissions=PERMISSIONS)
    with stack:
        assert stack.info.model_base_url == f"http://127.0.0.1:{ports.model}/v1"
        with urllib.request.urlopen(f"{stack.info.model_base_url}/models", timeout=5) as response:
            assert response.status == 200
        assert stack.info.services["model"] == stack.services["model"].pid
        for name in ("tenants.yaml", "policy.yaml", "scenarios.yaml"):
            assert (state / name).read_bytes() == (DEFAULTS / name).read_bytes()


def test_default_table_runs_the_scripted_model_when_no_endpoint_is_set(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    monkeypatch.delenv("CADUCEUS_MODEL_BASE_URL", raising=False)
    ports = StackPorts.free()
    table = default_services(StateLayout(tmp_path), ports, ModelSettings())
    model = table[0]
    assert model.module == "caduceus_embedded.scripted_model"
    assert model.ready_url == f"http://127.0.0.1:{ports.model}/v1/models"
    broker = next(spec for spec in table if spec.name == "broker")
    # the planners reach the model only through the inference gateway, which alone knows where the model is
    assert broker.env["CADUCEUS_MODEL_BASE_URL"] == f"http://127.0.0.1:{ports.inference}/v1"
    assert broker.env["CADUCEUS_MODEL_NAME"] == "scripted"
    inference = next(spec for spec in table if spec.name == "inference")
    upstreams = json.loads(inference.env["CADUCEUS_INFERENCE_UPSTREAMS"])
    assert upstreams["default"]["base_url"] == f"http://127.0.0.1:{ports.model}/v1"


def test_a_configured_model_endpoint_replaces_the_scripted_model(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("CADUCEUS_MODEL_BASE_URL", "https://llm.example.com/v1")
    monkeypatch.setenv("CADUCEUS_MODEL_NAME", "big-model")
    ports = StackPorts.free()
    table = default_services(StateLayout(tmp_path), ports, ModelSettings())
    assert "model" not in {spec.name for spec in table}
    broker = next(spec for spec in table if spec.name == "broker")
    assert broker.env["CADUCEUS_MODEL_BASE_URL"] == f"http://127.0.0.1:{ports.inference}/v1"
    assert broker.env["CADUCEUS_MODEL_NAME"] == "big-model"
    inference = next(spec for spec in table if spec.name == "inference")
    assert json.loads(inference.env["CADUCEUS_INFERENCE_UPSTREAMS"])["default"]["base_url"] == \
        "https://llm.example.com/v1"
    assert {spec.name for spec in table} == {"audit", "identity", "policy", "approval", "broker", "gateway", "mcp",
                                             "inference"}


def test_up_runs_the_whole_stack_and_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ports = StackPorts.free()
    up = subprocess.Popen(
        [sys.executable, "-m", "caduceus.cli", "up", "--state-dir", str(state), "--nats-port", str(ports.nats),
         "--temporal-port", str(ports.temporal), "--temporal-ui-port", str(ports.temporal_ui),
         "--issuer-port", str(ports.issuer), "--model-port", str(ports.model), "--webchat-port", str(ports.webchat),
         "--approval-ui-port", str(ports.approval_ui), "--mcp-port", str(ports.mcp_endpoint),
         "--inference-port", str(ports.inference), "--http-port", str(ports.http)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={k: v for k, v in os.environ.items() if k != "CADUCEUS_MODEL_BASE_URL"})
    # The operator's cue is the console, not the state file: stack.json is written a moment before the table is
    # printed, so Ctrl-C is pressed only once the table has ended with its "Ctrl-C stops everything." line.
    lines: list[str] = []
    shown = threading.Event()

    def read_console() -> None:
        for line in up.stdout:
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                shown.set()

    reader = threading.Thread(target=read_console, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 90
        while not shown.wait(0.2):
            assert up.poll() is None and time.monotonic() < deadline, "".join(lines)
        info = read_stack_info(state)
        assert set(info.services) == {"model", "audit", "identity", "policy", "approval", "broker", "gateway", "mcp",
                                      "inference"}
        pids = set(info.services.values())
        up.send_signal(signal.SIGINT)
        up.wait(timeout=60)
    finally:
        if up.poll() is None:  # a failed assertion: stop the stack the way an operator would, so nothing is left
            up.send_signal(signal.SIGINT)
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
        reader.join(timeout=10)
    output = "".join(lines)
    assert up.returncode == 0, output
    for line in ("Caduceus is up", f"nats://127.0.0.1:{ports.nats}", f"http://127.0.0.1:{ports.temporal_ui}",
                 str(state), "stopped"):
        assert line in output
    assert re.search(rf"web chat +http://127\.0\.0\.1:{ports.webchat} ", output), output
    # The hint runs as printed: it names the state dir this stack is in.
    assert f"try: caduceus chat --tenant acme --user alice --state-dir {state} hello" in output
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()], "services outlived caduceus up"
    for port in (ports.nats, ports.temporal, ports.issuer, ports.model):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"
    assert read_stack_info(state) is None


def wait_until(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_nats_server_or_temporal_that_dies_is_started_again_on_its_own_store(tmp_path: Path) -> None:
    """The servers are supervised like the services: killed, each comes back on its store (the stream keeps its
    messages); killed again at once, it is a crash loop and is left down, saying so."""
    problems: list[str] = []
    with make_stack(tmp_path / "state", standin("alpha"), problems=problems) as stack:
        held = asyncio.run(stream_messages(stack))
        for name in ("nats", "temporal"):
            server = getattr(stack, name)
            server.process.kill()
            assert wait_until(lambda n=name, s=server: getattr(stack, n) is not s), f"{name} was not started again"
            assert getattr(stack, name).process.poll() is None
        assert asyncio.run(stream_messages(stack)) >= held  # the JetStream store was kept
        assert any("nats exited unexpectedly" in p and "starting it again" in p for p in problems), problems
        again = stack.temporal
        again.process.kill()
        assert wait_until(lambda: any("temporal exited again" in p and "not restarting" in p for p in problems))
        assert stack.temporal is again  # left down


def test_a_cluster_node_that_dies_comes_back_but_one_held_down_stays_down_until_started(tmp_path: Path) -> None:
    with make_stack(tmp_path / "state", standin("alpha"), nats_nodes=3) as stack:
        second = stack.nats_cluster[1]
        second.process.kill()
        assert wait_until(lambda: stack.nats_cluster[1] is not second), "node 2 was not started again"
        assert wait_for_port(stack.nats_ports[1], 10)
        third = stack.nats_cluster[2]
        stack.kill_nats_node(2)  # on purpose (a fault test): held down
        time.sleep(2.0)
        assert stack.nats_cluster[2] is third and third.process.poll() is not None
        stack.start_nats_node(2)
        assert stack.nats_cluster[2].process.poll() is None
        # The watcher can still hold the killed process from its last look: it must see it was replaced (it once
        # raised ValueError on it and the watcher thread died, so nothing was restarted for the rest of the run).
        node = stack.nats_cluster[2]
        assert stack._start_server_again(third)
        assert stack.nats_cluster[2] is node and node.process.poll() is None
