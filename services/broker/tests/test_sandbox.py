"""Attacks on the sandbox from inside a real executor: each tool call below is signed, dispatched and run by
Hermes in a real bubblewrap sandbox, exactly as a model-chosen call would be.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

import caduceus_hermes_plugin
from caduceus_audit.app import build as build_audit
from caduceus_audit.settings import AuditSettings
from caduceus_broker.settings import BrokerSettings, ModelSettings
from caduceus_broker.workers import WorkerPool
from caduceus_bus import BusSettings, EventConnection
from caduceus_contracts import (
    Decision,
    SignedDecision,
    ToolCallCompleted,
    ToolCallDispatched,
    call_digest,
    ensure_signer,
    parse_event,
    subjects,
    utcnow,
)
from caduceus_embedded.ports import free_port

TENANT, WORKSPACE, SESSION = "acme", "attacks", "sess-sandbox"
MAX_PROCESSES = 64
PY = sys.executable
pytestmark = pytest.mark.timeout(240)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def allowlisted_host(tmp_path_factory):
    """A web server in a network namespace of its own (reached over a veth pair): port 8080 is on the policy's
    allowlist, port 8081 is not. Removed at the end."""
    tag = secrets.token_hex(3)
    netns, host_if, ns_if = f"cadsbx-{tag}", f"csb{tag}h", f"csb{tag}n"
    subnet = 64 + int(tag[:2], 16) % 128
    host_ip, ns_ip = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
    docroot = tmp_path_factory.mktemp("allowlisted")
    (docroot / "marker.txt").write_text("reached the allowlisted host\n")
    servers: list[subprocess.Popen] = []
    _ip("netns", "add", netns)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", netns)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        for args in (("addr", "add", f"{ns_ip}/30", "dev", ns_if), ("link", "set", ns_if, "up"),
                     ("link", "set", "lo", "up")):
            _ip("netns", "exec", netns, "ip", *args)
        for port in (8080, 8081):
            servers.append(subprocess.Popen(["ip", "netns", "exec", netns, PY, "-m", "http.server", "--bind", ns_ip,
                                             str(port), "--directory", str(docroot)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        import socket

        deadline = time.monotonic() + 20
        for port in (8080, 8081):
            while True:
                try:
                    socket.create_connection((ns_ip, port), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the test web server in the namespace did not start"
                    time.sleep(0.1)
        yield ns_ip, f"10.231.{subnet}.0/30"
    finally:
        for server in servers:
            server.terminate()
            server.wait()
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)


@pytest.fixture(scope="module")
def host_loopback_service():
    """A TCP service on the host's loopback that answers anyone who connects."""
    import socket

    server = socket.create_server(("127.0.0.1", free_port()))
    port = server.getsockname()[1]
    accepted = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(conn)
            conn.sendall(b"host loopback service\n")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield port, accepted
    server.close()


@pytest.fixture(scope="module")
async def sandboxed(nats_server, tmp_path_factory, allowlisted_host, host_loopback_service):
    ns_ip, subnet = allowlisted_host
    state = tmp_path_factory.mktemp("sandbox-state")
    signer = ensure_signer(state / "keys", "policy")
    ensure_signer(state / "keys", "identity")
    store = state / "secret-store"
    store.mkdir(mode=0o700)
    values = {"sandbox_token": secrets.token_hex(16), "deploy_key": secrets.token_hex(16)}
    for name, value in values.items():
        (store / name).write_text(value + "\n")
    policy = state / "sandboxes" / TENANT / f"{WORKSPACE}.yaml"
    policy.parent.mkdir(parents=True)
    policy.write_text(f"""
version: 1
name: attacks
network:
  egress: allowlist
  allow:
    - {{host: "{ns_ip}", ports: [8080]}}
    - {{host: localhost, ports: [{host_loopback_service[0]}]}}
  allow_addresses: ["{subnet}"]
process:
  max_processes: {MAX_PROCESSES}
secrets:
  store: {store}
  inject:
    - {{name: sandbox_token, env: CADUCEUS_TEST_TOKEN}}
    - {{name: deploy_key, file: true, scope: call, tools: [terminal]}}
""")
    bus = BusSettings(nats_url=nats_server.url)
    conn = await EventConnection.connect(bus, "test-sandbox")
    await conn.ensure_stream()
    audit = build_audit(AuditSettings(nats_url=nats_server.url, state_dir=state,
                                      audit_db_url=f"sqlite:///{state}/audit.db"))
    await audit.start()
    settings = BrokerSettings(state_dir=state)

    async def report(*args) -> None:
        pass

    pool = WorkerPool(settings, bus, ModelSettings(), conn.nc, report)
    worker = await pool.ensure(TENANT, WORKSPACE)
    completed: asyncio.Queue[ToolCallCompleted] = asyncio.Queue()

    async def on_completed(msg) -> None:
        await completed.put(parse_event(msg.data, expect=ToolCallCompleted))

    await conn.subscribe(subjects.tool_completed(TENANT, WORKSPACE), on_completed)

    async def run(tool: str, args: dict) -> ToolCallCompleted:
        event = _dispatched(signer, tool, args)
        await conn.publish(subjects.tool_dispatched(TENANT, WORKSPACE), event)
        while True:
            outcome = await asyncio.wait_for(completed.get(), 120)
            if outcome.call_id == event.call_id:
                return outcome

    yield {"run": run, "state": state, "worker": worker, "settings": settings, "values": values,
           "audit_db": state / "audit.db", "loopback": host_loopback_service, "ns_ip": ns_ip, "nats": nats_server}
    await pool.stop_all()
    await audit.stop()
    await conn.close()


def _dispatched(signer, tool: str, args: dict) -> ToolCallDispatched:
    call_id = f"call-{secrets.token_hex(6)}"
    decision = Decision(tenant=TENANT, workspace=WORKSPACE, session_id=SESSION, call_id=call_id, tool=tool,
                        digest=call_digest(tenant=TENANT, workspace=WORKSPACE, session=SESSION, tool=tool, args=args),
                        verdict="allow", reason="test", expires_at=utcnow() + timedelta(seconds=120))
    return ToolCallDispatched(tenant=TENANT, call_id=call_id, workspace=WORKSPACE, session_id=SESSION, tool=tool,
                              args=args, decision=SignedDecision.issue(signer, decision))


async def terminal(sandboxed, command: str, timeout: int = 60) -> str:
    outcome = await sandboxed["run"]("terminal", {"command": command, "timeout": timeout})
    assert outcome.status == "ok", outcome
    return json.loads(outcome.result)["output"]


async def test_reading_outside_the_allowed_paths_fails(sandboxed) -> None:
    state = sandboxed["state"]
    other_workspace = sandboxed["settings"].workspaces / TENANT / "default"
    other_workspace.mkdir(parents=True, exist_ok=True)
    (other_workspace / "other.txt").write_text("another workspace's file")
    assert (state / "keys" / "policy.key").exists()
    output = await terminal(sandboxed, f"cat {state}/keys/policy.key; cat /etc/shadow; cat {other_workspace}/other.txt; "
                                       f"ls {state}; cat /proc/1/environ; echo done")
    assert "PRIVATE KEY" not in output and "another workspace's file" not in output
    assert output.count("No such file or directory") >= 3, output
    assert "policy.pub" not in output  # the state dir itself is not there; only the bound public keys are
    assert "done" in output


async def test_the_planner_has_no_workspace(sandboxed) -> None:
    planner = sandboxed["worker"].processes["planner"].worker_pid()
    workspace = sandboxed["settings"].workspaces / TENANT / WORKSPACE
    assert planner is not None and workspace.is_dir()
    assert not Path(f"/proc/{planner}/root{workspace}").exists()
    assert Path(f"/proc/{planner}/root/usr/bin").is_dir()  # the same view that lacks the workspace


async def test_writing_outside_the_workspace_fails(sandboxed) -> None:
    state = sandboxed["state"]
    planner_home = sandboxed["settings"].workers / TENANT / WORKSPACE / "planner-home"
    output = await terminal(sandboxed, f"touch /usr/evil; touch {state}/evil; touch {planner_home}/evil; "
                                       "touch /etc/evil; touch /evil; touch in-workspace.txt && echo wrote-workspace")
    assert output.count("Read-only file system") >= 3 and "wrote-workspace" in output, output
    assert not (state / "evil").exists() and not (planner_home / "evil").exists() and not Path("/usr/evil").exists()
    assert (sandboxed["settings"].workspaces / TENANT / WORKSPACE / "in-workspace.txt").exists()


async def test_a_command_cannot_become_root_in_a_namespace_of_its_own(sandboxed) -> None:
    # Root in a new user namespace could remount its view of the filesystem; the sandbox allows none.
    output = await terminal(sandboxed, "id -u; unshare --user --map-root-user id -u && echo became-root; "
                                       "unshare --net true && echo new-netns; echo done")
    assert output.splitlines()[0] == "65534" and "done" in output
    assert "became-root" not in output and "new-netns" not in output, output


async def test_the_agent_cannot_change_its_own_config_plugins_or_policy(sandboxed) -> None:
    home = sandboxed["settings"].workers / TENANT / WORKSPACE / "executor-home"
    config = (home / "config.yaml").read_text()
    plugin_package = Path(caduceus_hermes_plugin.__file__).parent
    output = await terminal(sandboxed, (
        f"echo 'plugins: {{enabled: []}}' > {home}/config.yaml; "
        f"mkdir -p {home}/plugins/caduceus && echo 'name: caduceus' > {home}/plugins/caduceus/plugin.yaml; "
        f"echo 'import os' >> {plugin_package}/plugin.py; "
        f"echo 'tenants: {{}}' > {sandboxed['state']}/policy.yaml; "
        "echo done"))
    refusals = output.count("Read-only file system") + output.count("Permission denied")
    assert refusals == 4 and "done" in output, output  # every attempt failed, and the shell went on
    assert (home / "config.yaml").read_text() == config
    assert not (home / "plugins" / "caduceus").exists()
    assert "import os" not in (plugin_package / "plugin.py").read_text()
    assert not (sandboxed["state"] / "policy.yaml").exists()


async def test_loopback_services_of_the_host_are_unreachable(sandboxed) -> None:
    port, accepted = sandboxed["loopback"]
    nats_port = int(sandboxed["nats"].url.rsplit(":", 1)[1])
    before = len(accepted)
    probe = ("import socket\n"
             f"for port in ({port}, {nats_port}):\n"
             "    try:\n"
             "        socket.create_connection(('127.0.0.1', port), timeout=3); print('reached', port)\n"
             "    except OSError as exc: print('refused', port, exc)\n")
    output = await terminal(sandboxed, f"{PY} -c \"{probe}\"")
    assert f"refused {port}" in output and f"refused {nats_port}" in output and "reached" not in output
    assert len(accepted) == before


def _fetch(url: str, *, proxy: bool = True) -> str:
    opener = "urllib.request.build_opener()" if proxy else "urllib.request.build_opener(urllib.request.ProxyHandler({}))"
    code = ("import urllib.request, urllib.error\n"
            "try:\n"
            f"    print('BODY', {opener}.open('{url}', timeout=10).read().decode())\n"
            "except urllib.error.HTTPError as exc: print('HTTP', exc.code, exc.read().decode())\n"
            "except OSError as exc: print('ERROR', exc)\n")
    return f"{PY} -c \"{code}\""


async def test_egress_reaches_the_allowlisted_host_through_the_proxy_and_nothing_else(sandboxed) -> None:
    ns_ip = sandboxed["ns_ip"]
    port, accepted = sandboxed["loopback"]
    allowed = await terminal(sandboxed, _fetch(f"http://{ns_ip}:8080/marker.txt"))
    assert "BODY reached the allowlisted host" in allowed, allowed
    other_port = await terminal(sandboxed, _fetch(f"http://{ns_ip}:8081/marker.txt"))
    assert "HTTP 403" in other_port and "not on this workspace's egress allowlist" in other_port, other_port
    loopback = await terminal(sandboxed, _fetch(f"http://localhost:{port}/"))
    assert "HTTP 403" in loopback and "loopback" in loopback, loopback
    direct = await terminal(sandboxed, _fetch(f"http://{ns_ip}:8080/marker.txt", proxy=False))
    assert "ERROR" in direct and "BODY" not in direct, direct


def _processes_in(pid_namespace: str) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                count += os.readlink(f"/proc/{entry}/ns/pid") == pid_namespace
            except OSError:
                pass
    return count


async def test_a_fork_bomb_is_contained_by_the_process_limit(sandboxed) -> None:
    executor = sandboxed["worker"].processes["executor"]
    namespace = os.readlink(f"/proc/{executor.pid}/ns/pid")
    peak = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _processes_in(namespace))
            time.sleep(0.05)

    # Every process forks as fast as it can for 8 seconds, then exits: a real fork bomb that stops by itself.
    bomb = ("import os, time\n"
            "root, refused, end = os.getpid(), 0, time.time() + 8\n"
            "while time.time() < end:\n"
            "    try: os.fork()\n"
            "    except OSError: refused += 1; time.sleep(0.01)\n"
            "if os.getpid() == root: print('forks refused by the root:', refused)\n"
            "os._exit(0)\n")
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    output = await terminal(sandboxed, f"{PY} -c \"{bomb}\"; echo bomb over", timeout=60)
    took = time.monotonic() - started
    done.set()
    watcher.join()
    assert "bomb over" in output and "forks refused by the root:" in output, output
    assert int(output.split("forks refused by the root:")[1].split()[0]) > 0
    assert 20 <= peak[0] <= MAX_PROCESSES, peak[0]  # it ran, and never past the limit
    assert took < 60
    await asyncio.sleep(0.5)
    assert _processes_in(namespace) < 10  # it stopped by itself: only the launcher, executor and shells left
    assert "still here" in await terminal(sandboxed, "echo still here")


async def test_a_secret_reaches_the_tool_and_never_the_planner_or_the_audit_store(sandboxed) -> None:
    token, key = sandboxed["values"]["sandbox_token"], sandboxed["values"]["deploy_key"]
    digest = await terminal(sandboxed, 'printf %s "$CADUCEUS_TEST_TOKEN" | sha256sum; sha256sum < /run/secrets/deploy_key')
    assert hashlib.sha256(token.encode()).hexdigest() in digest
    assert hashlib.sha256(key.encode()).hexdigest() in digest
    echoed = await terminal(sandboxed, 'echo "token=$CADUCEUS_TEST_TOKEN"; cat /run/secrets/deploy_key')
    assert "token=[secret sandbox_token]" in echoed and "[secret deploy_key]" in echoed and token not in echoed
    # The file exists only during calls of the tools named for it (terminal), not for read_file.
    outside = await sandboxed["run"]("read_file", {"path": "/run/secrets/deploy_key"})
    assert key not in outside.result and ("not found" in outside.result.lower() or "no such" in outside.result.lower()
                                          or outside.status == "error"), outside
    planner = sandboxed["worker"].processes["planner"]
    for pid in (planner.worker_pid(), planner.pid, planner.popen.pid):
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert token.encode() not in environ and key.encode() not in environ
        assert b"CADUCEUS_SECRETS_FD" not in environ
    store_db = sandboxed["audit_db"]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if b"[secret sandbox_token]" in _audit_bytes(store_db):
            break
        await asyncio.sleep(0.2)
    stored = _audit_bytes(store_db)
    assert b"[secret sandbox_token]" in stored, "the audit store never received the scrubbed result"
    assert token.encode() not in stored and key.encode() not in stored


def _audit_bytes(path: Path) -> bytes:
    # The database file and its write-ahead log: every byte the audit store holds.
    return b"".join(p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists())
