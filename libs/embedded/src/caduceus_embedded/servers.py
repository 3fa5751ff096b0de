"""Start the real infrastructure servers as child processes: nats-server (JetStream) and Temporal.

Used by `caduceus up` and by the test fixtures, so tests run what operators run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from caduceus_embedded.binaries import find_binary
from caduceus_embedded.ports import wait_for_port


class ServerFailed(RuntimeError):
    """A server did not become ready; the message carries the tail of its log."""


@dataclass
class ServerProcess:
    name: str
    process: subprocess.Popen
    log_path: Path
    urls: dict[str, str] = field(default_factory=dict)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        # Both servers shut down cleanly on SIGINT (PostgreSQL too: a "fast" shutdown).
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def log_tail(path: Path, lines: int = 15) -> str:
    """The last lines of a process log, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def spawn(argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a child in its own session (Ctrl-C reaches only the supervisor), appending output to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def start_nats(port: int, store_dir: Path, log_path: Path, *, config_file: Path | None = None,
               timeout: float = 10.0) -> ServerProcess:
    """nats-server with JetStream on a file store under store_dir."""
    argv = [str(find_binary("nats-server")), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store_dir)]
    if config_file is not None:
        argv += ["-c", str(config_file)]
    proc = spawn(argv, log_path)
    server = ServerProcess("nats", proc, log_path, {"nats": f"nats://127.0.0.1:{port}"})
    if not wait_for_port(port, timeout) or proc.poll() is not None:
        server.kill()
        raise ServerFailed(f"nats-server did not start on port {port}:\n{log_tail(log_path)}")
    return server


def start_temporal(port: int, ui_port: int, db_file: Path, log_path: Path, *, timeout: float = 30.0) -> ServerProcess:
    """The Temporal dev server (with its Web UI) persisting to a SQLite file."""
    db_file.parent.mkdir(parents=True, exist_ok=True)
    argv = [str(find_binary("temporal")), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port),
            "--ui-port", str(ui_port), "--db-filename", str(db_file), "--log-level", "warn"]
    proc = spawn(argv, log_path)
    server = ServerProcess("temporal", proc, log_path,
                           {"temporal": f"127.0.0.1:{port}", "temporal-ui": f"http://127.0.0.1:{ui_port}"})
    if not wait_for_port(port, timeout) or proc.poll() is not None:
        server.kill()
        raise ServerFailed(f"Temporal dev server did not start on port {port}:\n{log_tail(log_path)}")
    return server


def start_scripted_model(port: int, scenarios_file: Path, log_path: Path, *, timeout: float = 15.0) -> ServerProcess:
    """The scripted OpenAI-compatible model (`python -m caduceus_embedded.scripted_model`) playing scenarios_file."""
    argv = [sys.executable, "-m", "caduceus_embedded.scripted_model", "--port", str(port),
            "--scenarios", str(scenarios_file)]
    proc = spawn(argv, log_path)
    server = ServerProcess("scripted-model", proc, log_path, {"model": f"http://127.0.0.1:{port}/v1"})
    if not wait_for_port(port, timeout) or proc.poll() is not None:
        server.kill()
        raise ServerFailed(f"the scripted model did not start on port {port}:\n{log_tail(log_path)}")
    return server


CLUSTER_NAME = "caduceus"


def nats_node_config(number: int, port: int, cluster_ports: list[int], store_dir: Path,
                     authorization: Path | None = None) -> str:
    """nats-server configuration of node `number` (0-based) of a loopback cluster with JetStream.

    `authorization` (the bus authority's server config) is inlined, so every node trusts the same credentials.
    """
    routes = ", ".join(f"nats-route://127.0.0.1:{p}" for i, p in enumerate(cluster_ports) if i != number)
    config = (
        f"server_name: caduceus-nats-{number + 1}\n"
        f"listen: 127.0.0.1:{port}\n"
        f"jetstream {{ store_dir: {json.dumps(str(store_dir))} }}\n"
        f"cluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{cluster_ports[number]}\n  routes: [{routes}]\n}}\n"
    )
    if authorization is not None:
        config += authorization.read_text()
    return config


def start_nats_node(number: int, ports: list[int], cluster_ports: list[int], base_dir: Path, *,
                    authorization: Path | None = None, timeout: float = 10.0) -> ServerProcess:
    """Start (or start again, on its own store) node `number` of the cluster described by ports/cluster_ports."""
    node_dir = base_dir / f"node{number + 1}"
    node_dir.mkdir(parents=True, exist_ok=True)
    config_file = node_dir / "nats.conf"
    config_file.write_text(nats_node_config(number, ports[number], cluster_ports, node_dir / "store", authorization))
    config_file.chmod(0o600)
    log_path = node_dir / "nats.log"
    proc = spawn([str(find_binary("nats-server")), "-c", str(config_file)], log_path)
    server = ServerProcess(f"nats-{number + 1}", proc, log_path, {"nats": f"nats://127.0.0.1:{ports[number]}"})
    if not wait_for_port(ports[number], timeout) or proc.poll() is not None:
        server.kill()
        raise ServerFailed(f"nats-server node {number + 1} did not start on port {ports[number]}:\n"
                           f"{log_tail(log_path)}")
    return server


def start_nats_cluster(ports: list[int], cluster_ports: list[int], base_dir: Path, *,
                       authorization: Path | None = None, timeout: float = 30.0) -> list[ServerProcess]:
    """A loopback nats-server cluster (one node per port) with clustered JetStream, ready for R3 streams.

    Returns once every node listens and the cluster has elected its JetStream meta leader; on failure the
    nodes started are killed and ServerFailed says which did not come up.
    """
    nodes: list[ServerProcess] = []
    try:
        for number in range(len(ports)):
            nodes.append(start_nats_node(number, ports, cluster_ports, base_dir, authorization=authorization,
                                         timeout=timeout))
        deadline = time.monotonic() + timeout
        while not all(_jetstream_clustered(node.log_path) for node in nodes):
            if time.monotonic() > deadline:
                raise ServerFailed("the NATS cluster elected no JetStream leader in time:\n"
                                   + "\n".join(log_tail(node.log_path, 5) for node in nodes))
            time.sleep(0.1)
    except BaseException:
        for node in nodes:
            node.kill()
        raise
    return nodes


def _jetstream_clustered(log_path: Path) -> bool:
    """True once the node's log says the JetStream meta group has a leader (this node or another)."""
    text = log_path.read_text(errors="replace")
    return "JetStream cluster new metadata leader" in text or "Self is new JetStream cluster metadata leader" in text
