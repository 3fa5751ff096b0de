"""The embedded stack: nats-server, the Temporal dev server, the model and every service, supervised.

`caduceus up`, `caduceus demo` and the end-to-end tests all run it:

    with EmbeddedStack(state_dir) as stack:
        stack.info.nats_url

Starting checks ports and binaries first, prepares the state dir (keys before any
service), starts the servers, then the services, and waits until each answers its
health check; any failure stops everything and raises. A restart on the same state
dir continues where it stopped. While running, a service that dies is restarted, unless it
died within CRASH_LOOP_S of its last restart: a crash loop is left down, with its log named, in
stack.json (`down`) and as an error event on the bus. A nats-server (a node of a cluster, or the only one) or the
Temporal dev server that dies is started again on its own store the same way, unless it was stopped on purpose
through kill_nats_node / kill_temporal (fault tests), which hold it down until started again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from caduceus_bus import (
    BusAuthority,
    BusSettings,
    EventConnection,
    PermissionFile,
    WorkerCredentialIssuer,
    load_permissions,
)
from caduceus_bus.authority import SERVER_CONFIG_FILE, WORKER_SIGNING_FILE
from caduceus_embedded.binaries import find_binary
from caduceus_embedded.database import check_database
from caduceus_embedded.health import wait_ready
from caduceus_embedded.layout import StateLayout
from caduceus_embedded.outages import OutageNotReported, left_down_event, report_left_down
from caduceus_embedded.ports import StackPorts, free_port
from caduceus_embedded.servers import (
    ServerFailed,
    ServerProcess,
    start_nats,
    start_nats_cluster,
    start_nats_node,
    start_temporal,
)
from caduceus_embedded.services import (
    RunningService,
    ServiceFailed,
    ServiceSpec,
    approval_ui_url,
    default_services,
    start_service,
    webchat_url,
)
from caduceus_embedded.settings import ModelSettings
from caduceus_embedded.stackinfo import (
    StackInfo,
    clear_stack_info,
    read_stack_info,
    write_stack_info,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

WATCH_INTERVAL_S = 0.5
# A restarted service that dies again sooner than this is crash-looping: restarting it would not help.
CRASH_LOOP_S = 30.0
# Times a service that failed while the stack starts is started again before the stack gives up.
START_RETRIES = 2
# Above a stream leader's election on a loopback cluster (a few seconds).
CLUSTER_PUBLISH_RETRY_S = 15.0


class StackAlreadyRunning(RuntimeError):
    """Another stack advertises itself in this state dir."""

    def __init__(self, info: StackInfo) -> None:
        self.info = info
        super().__init__(f"a stack is already running in {info.state_dir} (pid {info.pid}, NATS {info.nats_url}); "
                         f"stop it first, or use another --state-dir")


class EmbeddedStack:
    """Runs and supervises the whole stack for one state dir; see the module docstring."""

    def __init__(self, state_dir: Path | str, ports: StackPorts | None = None, *,
                 services: Sequence[ServiceSpec] | None = None, model: ModelSettings | None = None,
                 ready_timeout: float = 60.0, stop_grace: float = 10.0, crash_loop_s: float = CRASH_LOOP_S,
                 on_progress: Callable[[str], None] | None = None,
                 on_problem: Callable[[str], None] | None = None,
                 bus_permissions: PermissionFile | None = None, replicas: int = 1, nats_nodes: int = 1,
                 database_url: str | None = None) -> None:
        self.layout = StateLayout(Path(state_dir).expanduser().resolve())
        # Every store in this PostgreSQL database (kept in the state dir at start for later commands), else SQLite.
        self.new_database_url = database_url
        self.database_url = database_url or self.layout.database_url
        self.database_shown = ""  # its URL without the password, once checked at start
        self.ports = ports or StackPorts()
        configured = model or ModelSettings()
        self.model_is_scripted = configured.is_scripted
        self.model = configured.for_stack(self.ports.model)
        if replicas < 1:
            raise ValueError(f"replicas must be at least 1, not {replicas}")
        self.replicas = replicas
        self.specs = (list(services) if services is not None
                      else default_services(self.layout, self.ports, configured, replicas, self.database_url))
        self.ready_timeout = ready_timeout
        self.stop_grace = stop_grace
        self.crash_loop_s = crash_loop_s
        # Who may publish and subscribe to what: infra/nats/permissions.yaml unless a test brings its own.
        self.bus_permissions = bus_permissions or load_permissions()
        self.say = on_progress or log.info
        self.warn = on_problem or log.warning
        self.nats: ServerProcess | None = None
        # A cluster (nats_nodes > 1): node 1 on ports.nats, the others and the route ports free ones.
        self.nats_ports = [self.ports.nats] + [free_port() for _ in range(nats_nodes - 1)]
        self.nats_cluster_ports = [free_port() for _ in range(nats_nodes)] if nats_nodes > 1 else []
        self.nats_cluster: list[ServerProcess] = []
        self.temporal: ServerProcess | None = None
        # Servers stopped on purpose (by name), not restarted by the watcher; the lock keeps the watcher and a
        # caller from starting one server twice.
        self._held: set[str] = set()
        self._servers_lock = threading.RLock()
        self._server_restarted_at: dict[str, float] = {}
        self.services: dict[str, RunningService] = {}
        self._info: StackInfo | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def nats_url(self) -> str:
        """The bus URL: every node of a cluster, comma-separated."""
        return ",".join(f"nats://127.0.0.1:{port}" for port in self.nats_ports)

    @property
    def stream_replicas(self) -> int:
        """Copies of the event stream and KV buckets: one per node, at most 3."""
        return min(3, len(self.nats_ports))

    @property
    def temporal_address(self) -> str:
        return f"127.0.0.1:{self.ports.temporal}"

    @property
    def info(self) -> StackInfo:
        """What the running stack advertises in stack.json."""
        if self._info is None:
            raise RuntimeError("the stack is not running: call start() or use it as a context manager")
        return self._info

    def common_env(self) -> dict[str, str]:
        """The environment every service gets, on top of its own spec."""
        return {"CADUCEUS_NATS_URL": self.nats_url, "CADUCEUS_STATE_DIR": str(self.layout.root),
                "CADUCEUS_KEYS_DIR": str(self.layout.keys), "CADUCEUS_STREAM_REPLICAS": str(self.stream_replicas),
                # On a cluster, a publish waits out a stream leader's election rather than failing.
                **({"CADUCEUS_PUBLISH_RETRY_S": f"{self.publish_retry_s:g}"} if self.publish_retry_s else {}),
                # The broker's ledger of used decisions at as many copies as the stream.
                "CADUCEUS_USED_DECISIONS_REPLICAS": str(self.stream_replicas)}

    def service_env(self, spec: ServiceSpec) -> dict[str, str]:
        """The common environment plus the service's own bus credential (a service with no role gets none)."""
        env = self.common_env()
        if spec.name in self.bus_permissions.services:
            env["CADUCEUS_NATS_CREDENTIALS"] = str(self.layout.bus_credentials(spec.name))
        if spec.name == "broker":
            env["CADUCEUS_NATS_WORKER_SIGNING"] = str(self.layout.bus_keys / WORKER_SIGNING_FILE)
        return env

    def bus_settings(self, role: str = "operator") -> BusSettings:
        """How this process connects to the stack's bus with one of the service roles' credentials."""
        return BusSettings(nats_url=self.nats_url, nats_credentials=self.layout.bus_credentials(role),
                           stream_replicas=self.stream_replicas, publish_retry_s=self.publish_retry_s)

    def worker_bus_settings(self, role: str, tenant: str, workspace: str, worker_id: str = "outside") -> BusSettings:
        """A worker's credential, minted as the broker would, for a test or benchmark that plays a worker."""
        issuer = WorkerCredentialIssuer.load(self.layout.bus_keys / WORKER_SIGNING_FILE)
        credential = issuer.issue(role, tenant, workspace, worker_id)
        path = self.layout.bus_keys / f"{role}-{tenant}-{workspace}-{worker_id}.creds"
        path.write_text(credential.text)
        path.chmod(0o600)
        return BusSettings(nats_url=self.nats_url, nats_credentials=path, publish_retry_s=self.publish_retry_s)

    @property
    def publish_retry_s(self) -> float:
        """On a cluster, how long every publisher (services, their workers, clients) waits out a stream leader's
        election before a publish fails; on one nats-server, 0."""
        return CLUSTER_PUBLISH_RETRY_S if self.nats_cluster_ports else 0.0

    def _prepare_bus(self) -> Path:
        """Write nats-server's authorization and every service role's credential; returns the server config."""
        return BusAuthority(self.layout.bus_keys, self.bus_permissions).write_all()

    def start(self) -> StackInfo:
        """Start everything and wait until it is ready; on any failure stop what started and raise.

        Raises StackAlreadyRunning, PortBusy, MissingBinary, ServerFailed or ServiceFailed.
        """
        running = read_stack_info(self.layout.root)
        if running is not None:
            raise StackAlreadyRunning(running)
        self.ports.check(model=self.model_is_scripted, replicas=self.replicas)
        binaries = find_binary("nats-server"), find_binary("temporal")
        self._stopping.clear()
        try:
            self._start(*binaries)
        except BaseException:
            self.stop()
            raise
        return self.info

    def _start(self, nats_binary: Path, temporal_binary: Path) -> None:
        self.say(f"state dir {self.layout.root}")
        self.layout.prepare()
        self.database_shown = ""
        if self.database_url:
            self.database_shown = check_database(self.database_url)
            self.say(f"stores in PostgreSQL {self.database_shown} (audit, identity, web chat, MCP pins)")
            if self.new_database_url:
                self.layout.keep_database_url(self.new_database_url)
        if self.nats_cluster_ports:
            self.nats_cluster = start_nats_cluster(self.nats_ports, self.nats_cluster_ports, self._cluster_dir,
                                                   authorization=self._prepare_bus())
            self.nats = self.nats_cluster[0]
        else:
            self.nats = start_nats(self.ports.nats, self.layout.nats_store, self.layout.log("nats"),
                                   config_file=self._prepare_bus())
        self.say(f"nats-server {nats_binary} listening on {self.nats_url} (JetStream store {self.layout.nats_store}; "
                 f"authorization on, credentials in {self.layout.bus_keys})")
        stream = BusSettings(nats_url=self.nats_url).stream_name
        _run(_ensure_stream(self.bus_settings("operator")))
        self.say(f"JetStream stream {stream} ready")
        self.temporal = start_temporal(self.ports.temporal, self.ports.temporal_ui, self.layout.temporal_db,
                                       self.layout.log("temporal"))
        self.say(f"Temporal dev server {temporal_binary} on {self.temporal_address} "
                 f"(Web UI http://127.0.0.1:{self.ports.temporal_ui})")
        if not self.model_is_scripted:
            self.say(f"model endpoint {self.model.base_url} (from CADUCEUS_MODEL_BASE_URL), model {self.model.name}")
        for spec in self.specs:
            self.services[spec.key] = start_service(spec, self.service_env(spec), self.layout.log(spec.key))
        self.say(f"starting {', '.join(self.services)}")
        _run(wait_ready(self.bus_settings("operator"), list(self.services.values()), self.ready_timeout,
                        on_ready=lambda s: self.say(f"{s.key} ready (pid {s.pid})"),
                        cancelled=self._stopping.is_set, start_again=self._start_again))
        self._info = StackInfo(
            state_dir=str(self.layout.root), pid=os.getpid(), nats_url=self.nats_url,
            dev_issuer_url=f"http://127.0.0.1:{self.ports.issuer}", temporal_address=self.temporal_address,
            temporal_ui_url=f"http://127.0.0.1:{self.ports.temporal_ui}", model_base_url=self.model.base_url or "",
            audit_db_url=self.database_url or self.layout.audit_db_url, database=self.database_shown,
            services={key: s.pid for key, s in self.services.items()},
            approval_ui_url=approval_ui_url(self.ports) if "approval" in self.services else "",
            webchat_url=webchat_url(self.ports) if "gateway" in self.services else "",
            metrics_urls={key: s.spec.metrics_url for key, s in self.services.items() if s.spec.metrics_url},
            client_credentials=_if_exists(self.layout.bus_credentials("client")),
            operator_credentials=str(self.layout.bus_credentials("operator")),
            publish_retry_s=self.publish_retry_s,
        )
        write_stack_info(self._info)
        self._watcher = threading.Thread(target=self._watch, name="caduceus-stack-watch", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        """Stop services (SIGTERM, then SIGKILL after the grace period), then Temporal and nats (SIGINT)."""
        self._stopping.set()
        # Not started yet when an interrupt came while starting it: nothing to join.
        if self._watcher is not None and self._watcher.is_alive() and self._watcher is not threading.current_thread():
            self._watcher.join()
        self._watcher = None
        clear_stack_info(self.layout.root)
        self._info = None
        for service in self.services.values():
            service.terminate()
        deadline = time.monotonic() + self.stop_grace
        for service in self.services.values():
            try:
                service.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.warn(f"{service.key} did not stop within {self.stop_grace:.0f}s; killing it")
            service.kill()
        self.services.clear()
        with self._servers_lock:
            for server in (self.temporal, *(self.nats_cluster or [self.nats])):
                if server is not None:
                    server.stop()
            self.temporal = self.nats = None
            self.nats_cluster = []
            self._held.clear()

    @property
    def _cluster_dir(self) -> Path:
        return self.layout.nats_store.parent / "nats-cluster"

    def kill_nats_node(self, number: int) -> None:
        """kill -9 node `number` (0-based) of the stack's NATS cluster and hold it down until start_nats_node (for
        fault tests and benchmarks: the watcher would start it again at once)."""
        with self._servers_lock:
            self._held.add(self.nats_cluster[number].name)
            self.nats_cluster[number].kill()

    def start_nats_node(self, number: int) -> None:
        """Start node `number` of the cluster again on its own store; it catches up from the others."""
        with self._servers_lock:
            node = start_nats_node(number, self.nats_ports, self.nats_cluster_ports, self._cluster_dir,
                                   authorization=self.layout.bus_keys / SERVER_CONFIG_FILE)
            self.nats_cluster[number] = node
            self._held.discard(node.name)
            if number == 0:
                self.nats = self.nats_cluster[0]

    def kill_temporal(self) -> None:
        """kill -9 the Temporal dev server and hold it down until restart_temporal (for fault tests)."""
        with self._servers_lock:
            if self.temporal is not None:
                self._held.add(self.temporal.name)
                self.temporal.kill()

    def restart_temporal(self) -> None:
        """Start the Temporal dev server again on its ports and database, after it died or was stopped.

        Workflows it kept in its database go on; services reconnect by themselves (ServerFailed if it cannot start).
        """
        with self._servers_lock:
            if self.temporal is not None:
                self.temporal.stop()
            self.temporal = start_temporal(self.ports.temporal, self.ports.temporal_ui, self.layout.temporal_db,
                                           self.layout.log("temporal"))
            self._held.discard(self.temporal.name)
        self.say(f"Temporal dev server restarted on {self.temporal_address}")

    def __enter__(self) -> "EmbeddedStack":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _watch(self) -> None:
        """Say when a child dies; restart a server or service that dies, leave one that crash-loops down."""
        reported: set[str] = set()
        while not self._stopping.wait(WATCH_INTERVAL_S):
            try:
                self._look_after(reported)
            except Exception as exc:  # the watcher must outlive any one failure, or nothing is restarted again
                self.warn(f"the stack's watcher failed ({type(exc).__name__}: {exc}); watching on")

    def _look_after(self, reported: set[str]) -> None:
        """One look at every server and service (see _watch)."""
        for server in (*(self.nats_cluster or [self.nats]), self.temporal):
            if server is not None and server.name not in reported and server.process.poll() is not None:
                if not self._start_server_again(server):
                    reported.add(server.name)
        for service in list(self.services.values()):
            code = service.exit_code()
            if code is None or service.key in reported or self._stopping.is_set():
                continue
            if service.restarts >= 1 and service.uptime() < self.crash_loop_s:
                reported.add(service.key)
                self._leave_down(service, f"{service.key} exited again with code {code} within "
                                 f"{self.crash_loop_s:g} s of its restart (log: {service.log_path}); not "
                                 "restarting it")
                continue
            self.warn(f"{service.key} exited unexpectedly with code {code} (log: {service.log_path}); "
                      f"restarting it")
            if not self._restart(service):
                reported.add(service.key)

    def _start_server_again(self, server: ServerProcess) -> bool:
        """Start a nats-server or Temporal that died again on its own store; False when it is left down (a crash
        loop, or it cannot start). One held down on purpose is left alone (True: it is not a failure)."""
        with self._servers_lock:
            if server.name in self._held or self._stopping.is_set() or server.process.poll() is None:
                return True
            current = (self.temporal,) if server.name == getattr(self.temporal, "name", None) else \
                tuple(self.nats_cluster or [self.nats])
            if not any(server is running for running in current):
                return True  # replaced meanwhile (a fault test started it again): the watcher saw the old process
            code = server.process.returncode
            last = self._server_restarted_at.get(server.name)
            if last is not None and time.monotonic() - last < self.crash_loop_s:
                self.warn(f"{server.name} exited again with code {code} within {self.crash_loop_s:g} s of its "
                          f"restart (log: {server.log_path}); not restarting it: fix the cause, then restart the stack")
                return False
            self.warn(f"{server.name} exited unexpectedly with code {code} (log: {server.log_path}); starting it again")
            try:
                if server is self.temporal:
                    self.restart_temporal()
                elif self.nats_cluster:
                    self.start_nats_node(self.nats_cluster.index(server))
                else:
                    self.nats = start_nats(self.ports.nats, self.layout.nats_store, self.layout.log("nats"),
                                           config_file=self.layout.bus_keys / SERVER_CONFIG_FILE)
            except ServerFailed as exc:
                self.warn(f"{server.name} did not start again: {str(exc).splitlines()[0]}; restart the stack")
                return False
            self._server_restarted_at[server.name] = time.monotonic()
            self.say(f"{server.name} is back on its own store")
            return True

    def _start_again(self, failed: RunningService, code: int) -> RunningService | None:
        """A service that failed while starting (exit 1: the bus or a store too slow to answer while everything
        starts at once on a busy machine) is started again, up to START_RETRIES times; one that cannot start as
        configured (exit 2) is not."""
        if code != 1 or failed.start_retries >= START_RETRIES:
            return None
        self.warn(f"{failed.key} exited with code {code} while starting ({_last_line(failed.log_path)}); "
                  "starting it again")
        fresh = start_service(failed.spec, self.service_env(failed.spec), failed.log_path)
        fresh.start_retries = failed.start_retries + 1
        self.services[failed.key] = fresh
        return fresh

    def _restart(self, old: RunningService) -> bool:
        """Start the service again and wait for it; False when it did not come back."""
        fresh = start_service(old.spec, self.service_env(old.spec), old.log_path)
        fresh.restarts = old.restarts + 1
        self.services[old.key] = fresh
        try:
            ready = _run(wait_ready(self.bus_settings("operator"), [fresh], self.ready_timeout,
                                    cancelled=self._stopping.is_set))
        except (ServiceFailed, OSError) as exc:
            self._leave_down(fresh, f"{str(exc).splitlines()[0]}; not restarting it again")
            return False
        if ready and self._info is not None:
            self.say(f"{fresh.key} is back (pid {fresh.pid})")
            self._info = self._info.model_copy(update={
                "services": {key: s.pid for key, s in self.services.items()}})
            write_stack_info(self._info)
        return True

    def _leave_down(self, service: RunningService, problem: str) -> None:
        """A service stays down: say so on the console, in stack.json (`caduceus status`) and on the bus (audited)."""
        self.warn(problem)
        if self._info is not None:
            self._info = self._info.model_copy(update={"down": {**self._info.down, service.key: problem}})
            write_stack_info(self._info)
        event = left_down_event(service.name, service.spec.health_subject, problem)
        try:
            _run(report_left_down(self.bus_settings("operator"), event))
        except OutageNotReported as exc:
            self.warn(f"could not report {service.key} down on the bus: {exc}")


def _last_line(log: Path) -> str:
    """The last line a service wrote to its log (why it stopped), or a pointer to the log."""
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    return lines[-1][:200] if lines else f"log: {log}"


def _if_exists(path: Path) -> str:
    return str(path) if path.exists() else ""


async def _ensure_stream(settings: BusSettings) -> None:
    connection = await EventConnection.connect(settings, "caduceus-up")
    try:
        await connection.ensure_stream()
    finally:
        await connection.close()


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even when the caller's thread has an event loop.

    The join stays interruptible by Ctrl-C; the daemon thread then ends on its own (it watches `_stopping`).
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = asyncio.run(coro)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="caduceus-stack-async", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
