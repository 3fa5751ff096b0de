"""Starting one worker process in its sandbox: the plan from the policy, the channels, the process.

The planner gets its home, the bus and its model endpoint (and the trace collector when one
is configured); the executor gets its home, the workspace, the bus, the egress proxy when the
policy allows egress, and its secrets through a pipe. Both get only the public signing keys.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from caduceus_broker.profiles import PROTECTED_IN_HOME
from caduceus_bus import nats_servers
from caduceus_sandbox import (
    BwrapBackend,
    Channel,
    ChannelServers,
    EgressProxy,
    SandboxPlan,
    SandboxPolicy,
    egress_channel,
    python_runtime,
    relay_channel,
)
from caduceus_sandbox.secrets import read_secrets, secrets_pipe

log = logging.getLogger("caduceus.broker.sandbox")
# What a worker imports from this repository; the rest comes from the virtualenv (its sandbox's runtime).
WORKER_PACKAGES = ("caduceus_broker", "caduceus_bus", "caduceus_contracts", "caduceus_hermes_plugin",
                   "caduceus_telemetry", "caduceus_sandbox", "caduceus_web")
INFO_TIMEOUT_S = 30.0
RUN_PREFIX = "caduceus-broker-"


@dataclass
class SandboxedProcess:
    """A worker in its sandbox: bubblewrap's process, the launcher inside it, and the broker's channels."""

    popen: subprocess.Popen
    launcher_pid: int
    servers: ChannelServers
    run_dir: Path
    closed: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.launcher_pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def poll(self) -> int | None:
        return self.popen.poll()

    def worker_pid(self) -> int | None:
        """The worker process itself (the launcher's child), as the host sees it."""
        try:
            children = Path(f"/proc/{self.launcher_pid}/task/{self.launcher_pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def terminate(self) -> None:
        """Ask the worker to stop: the launcher passes SIGTERM on to it."""
        if self.popen.poll() is None:
            try:
                os.kill(self.launcher_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """Kill the sandbox's PID 1 (the whole PID namespace dies with it), then bubblewrap."""
        if self.popen.poll() is None:
            # While bubblewrap runs it has not reaped the launcher, so this pid is still the launcher's.
            try:
                os.kill(self.launcher_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.kill()
        self.popen.wait()

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.servers.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)


@dataclass(frozen=True)
class WorkerEndpoints:
    """Where the control plane is, as the broker sees it."""

    nats_url: str
    model_base_url: str
    otlp_endpoint: str | None = None


class Sandboxes:
    """Builds plans from policies and starts sandboxed workers with the bubblewrap backend."""

    def __init__(self, backend: BwrapBackend, endpoints: WorkerEndpoints, keys_dir: Path) -> None:
        self.backend = backend
        self.endpoints = endpoints
        self.keys_dir = keys_dir
        # Sockets and generated files of this broker's sandboxes; a short path (unix sockets allow ~100 bytes).
        self.run_root = Path(tempfile.gettempdir()) / f"{RUN_PREFIX}{os.getpid()}"
        _remove_stale_run_roots()

    def close(self) -> None:
        shutil.rmtree(self.run_root, ignore_errors=True)

    async def start(self, role: str, policy: SandboxPolicy, *, env: dict[str, str], home: Path,
                    workspace: Path | None, log_file) -> SandboxedProcess:
        """Start `python -m caduceus_broker.<role>` in a sandbox for `policy`; raises PolicyError,
        SandboxUnavailable, ChannelError or OSError when it cannot.
        """
        owner = self.backend.sandbox_user if self.backend.privileged else None
        self.run_root.mkdir(mode=0o700, exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(prefix=f"{role}-", dir=self.run_root))
        secrets_fd: int | None = None
        try:
            channels, env = self._channels(role, policy, env)
            egress = EgressProxy(policy.network) if any(c.target is None for c in channels) else None
            servers = ChannelServers(run_dir / "channels", channels, egress)
            await servers.start(owner)
            pass_fds: tuple[int, ...] = ()
            bundle = read_secrets(policy) if role == "executor" else []
            if bundle:
                secrets_fd = secrets_pipe(bundle)
                pass_fds = (secrets_fd,)
                env = {**env, "CADUCEUS_SECRETS_FD": str(secrets_fd)}
            writable = [home] + ([workspace] if workspace is not None else [])
            if owner is not None:
                for path in (run_dir, run_dir / "channels", *writable):
                    _give(path, owner)
            plan = SandboxPlan(role=role, policy=policy, command=(sys.executable, "-m", f"caduceus_broker.{role}"),
                               env=env, home=home, run_dir=run_dir, workspace=workspace,
                               home_read_only=PROTECTED_IN_HOME,
                               runtime=python_runtime(WORKER_PACKAGES) + self._public_keys(),
                               channels=tuple(channels), pass_fds=pass_fds,
                               secret_files=any(s["file"] for s in bundle))
            info_read, info_write = os.pipe()
            life_read, life_write = os.pipe()
            plan = dataclasses.replace(plan, life_fd=life_read)
            try:
                argv = self.backend.command(plan, info_fd=info_write)
                popen = subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                         stdin=life_write, start_new_session=True,
                                         pass_fds=(info_write, life_read, *pass_fds))
            finally:
                for fd in (info_write, life_read, life_write):
                    os.close(fd)
            launcher_pid = await asyncio.wait_for(asyncio.to_thread(_read_child_pid, info_read), INFO_TIMEOUT_S)
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        finally:
            if secrets_fd is not None:
                os.close(secrets_fd)
        if launcher_pid is None:
            await asyncio.to_thread(popen.wait)
            launcher_pid = popen.pid  # bubblewrap failed before starting the sandbox; its log says why
        return SandboxedProcess(popen, launcher_pid, servers, run_dir)

    def _channels(self, role: str, policy: SandboxPolicy, env: dict[str, str]) -> tuple[list[Channel], dict]:
        """The channels of one worker, and its environment with every endpoint pointed at them."""
        env = dict(env)
        channels = []
        inside_urls = []
        # One channel per node of a NATS cluster, so the worker moves to another node when its node dies.
        for number, node_url in enumerate(nats_servers(self.endpoints.nats_url)):
            nats, inside_url = relay_channel("nats" if number == 0 else f"nats{number + 1}", node_url, len(channels))
            channels.append(nats)
            inside_urls.append(inside_url)
        env["CADUCEUS_NATS_URL"] = ",".join(inside_urls)
        if self.endpoints.otlp_endpoint:
            otlp, env["OTEL_EXPORTER_OTLP_ENDPOINT"] = relay_channel("otlp", self.endpoints.otlp_endpoint,
                                                                     len(channels))
            channels.append(otlp)
        if role == "planner":
            base_url = policy.planner.model_base_url or self.endpoints.model_base_url
            model, env["CADUCEUS_MODEL_BASE_URL"] = relay_channel("model", base_url, len(channels))
            channels.append(model)
        elif policy.network.egress == "allowlist":
            egress, proxy_url = egress_channel(len(channels))
            channels.append(egress)
            for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
                env[name] = proxy_url
        return channels, env

    def _public_keys(self) -> tuple[Path, ...]:
        # Only the public halves: a worker verifies signatures and must never be able to make them.
        return tuple(sorted(self.keys_dir.glob("*.pub")))


def _remove_stale_run_roots() -> None:
    """Run dirs of brokers that died without cleaning up (killed): their sandboxes died with them."""
    for root in Path(tempfile.gettempdir()).glob(f"{RUN_PREFIX}*"):
        pid = root.name.removeprefix(RUN_PREFIX)
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(root, ignore_errors=True)


def _give(path: Path, owner: tuple[int, int]) -> None:
    """Make `path` (and everything under it not already theirs) belong to the sandbox's user."""
    uid, gid = owner
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            stat = os.lstat(name)
            if (stat.st_uid, stat.st_gid) != (uid, gid):
                os.lchown(name, uid, gid)


def _read_child_pid(fd: int) -> int | None:
    """bubblewrap's --info-fd JSON names the sandbox's PID 1 (our launcher) as the host sees it."""
    with os.fdopen(fd, "rb") as info:
        data = info.read()
    try:
        return int(json.loads(data)["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None
