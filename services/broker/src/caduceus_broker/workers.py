"""Planner and executor processes, one pair per tenant/workspace, started on first use.

The broker writes each worker's Hermes profile, starts it with exactly the
environment it needs (the planner gets the model credentials and no workspace;
the executor gets the workspace and no model credentials), waits until it
answers its health subject, and notices when it dies.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from caduceus_broker.bus_access import WorkerBusAccess
from caduceus_broker.profiles import worker_paths, write_profile
from caduceus_broker.runtime import health_subject
from caduceus_broker.settings import BrokerSettings, ModelSettings
from caduceus_bus import BusSettings, CredentialError
from caduceus_contracts import new_id

log = logging.getLogger("caduceus.broker.workers")
ROLES = ("planner", "executor")
# Variables a worker inherits from the broker; everything else is set explicitly.
_PASSTHROUGH = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV", "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_EXPORTER_OTLP_HEADERS")


class WorkerStartFailed(RuntimeError):
    """A worker process did not become ready; the message names it and points at its log."""


@dataclass
class Worker:
    tenant: str
    workspace: str
    worker_id: str
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def dead_role(self) -> tuple[str, int] | None:
        for role, proc in self.processes.items():
            code = proc.poll()
            if code is not None:
                return role, code
        return None

    def stop(self, grace: float = 5.0) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


LifecycleReporter = Callable[[Worker, str, str, str], Awaitable[None]]


class WorkerPool:
    def __init__(self, settings: BrokerSettings, bus: BusSettings, model: ModelSettings, nc: Client,
                 report: LifecycleReporter) -> None:
        self.settings = settings
        self.bus = bus
        self.model = model
        self.nc = nc
        self.report = report
        self.bus_access = WorkerBusAccess(bus, settings.nats_worker_signing)
        self.workers: dict[tuple[str, str], Worker] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def ensure(self, tenant: str, workspace: str) -> Worker:
        """The running worker of a tenant/workspace, started (or restarted) if needed."""
        key = (tenant, workspace)
        async with self._locks.setdefault(key, asyncio.Lock()):
            worker = self.workers.get(key)
            if worker is not None:
                dead = worker.dead_role()
                if dead is None:
                    return worker
                await self._forget(worker, f"{dead[0]} exited with code {dead[1]}")
            worker = await self._start(tenant, workspace)
            self.workers[key] = worker
            return worker

    async def _start(self, tenant: str, workspace: str) -> Worker:
        paths = worker_paths(self.settings.workers, self.settings.workspaces, tenant, workspace)
        paths["workspace"].mkdir(parents=True, exist_ok=True)
        paths["logs"].mkdir(parents=True, exist_ok=True)
        worker = Worker(tenant, workspace, new_id()[:12])
        for role in ROLES:
            home = write_profile(paths[f"{role}_home"])
            env = self._environment(worker, role, home, paths["workspace"])
            try:
                env.update(self.bus_access.environment(role, tenant, workspace, worker.worker_id, paths["credentials"]))
            except CredentialError as exc:
                raise WorkerStartFailed(f"the {role} for {tenant}/{workspace} has no bus credential: {exc}") from None
            log_path = paths["logs"] / f"{role}.log"
            log_file = open(log_path, "ab")
            cwd = paths["workspace"] if role == "executor" else home
            worker.processes[role] = subprocess.Popen(
                [sys.executable, "-m", f"caduceus_broker.{role}"], cwd=cwd, env=env, stdout=log_file,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            worker.logs[role] = log_path
        try:
            for role in ROLES:
                await self._wait_ready(worker, role)
        except WorkerStartFailed as exc:
            worker.stop()
            await self.report(worker, "planner", "refused", str(exc))
            raise
        for role in ROLES:
            await self.report(worker, role, "started", f"pid {worker.processes[role].pid}")
        return worker

    def _environment(self, worker: Worker, role: str, home: Path, workspace_dir: Path) -> dict[str, str]:
        env = {k: os.environ[k] for k in _PASSTHROUGH if k in os.environ}
        env.update({
            "HERMES_HOME": str(home),
            "HOME": str(home),
            "CADUCEUS_TENANT": worker.tenant,
            "CADUCEUS_WORKSPACE": worker.workspace,
            "CADUCEUS_WORKER_ID": worker.worker_id,
            "CADUCEUS_WORKER_ROLE": role,
            "CADUCEUS_KEYS_DIR": str(self.settings.keys),
            "CADUCEUS_TOOLSETS": _json_list(self.settings.toolsets),
            "CADUCEUS_DECISION_TIMEOUT_S": str(self.settings.decision_timeout_s),
            "CADUCEUS_COMPLETION_TIMEOUT_S": str(self.settings.completion_timeout_s),
            "CADUCEUS_MAX_ITERATIONS": str(self.settings.max_iterations),
        })
        if role == "planner":
            env.update(CADUCEUS_MODEL_BASE_URL=self.model.base_url, CADUCEUS_MODEL_API_KEY=self.model.api_key,
                       CADUCEUS_MODEL_NAME=self.model.name)
        else:
            env.update(CADUCEUS_WORKSPACE_DIR=str(workspace_dir), TERMINAL_CWD=str(workspace_dir))
        return env

    async def _wait_ready(self, worker: Worker, role: str) -> None:
        subject = health_subject(worker.tenant, worker.workspace, role)
        deadline = asyncio.get_running_loop().time() + self.settings.worker_start_timeout_s
        proc = worker.processes[role]
        while asyncio.get_running_loop().time() < deadline:
            if proc.poll() is not None:
                raise WorkerStartFailed(f"the {role} for {worker.tenant}/{worker.workspace} exited with code "
                                        f"{proc.returncode}; see {worker.logs[role]}")
            try:
                await self.nc.request(subject, b"", timeout=0.5)
                return
            except (NoRespondersError, NatsTimeout):
                await asyncio.sleep(0.1)
        raise WorkerStartFailed(f"the {role} for {worker.tenant}/{worker.workspace} was not ready within "
                                f"{self.settings.worker_start_timeout_s:g} s; see {worker.logs[role]}")

    async def watch(self, interval: float = 1.0) -> None:
        """Report workers that died; the next turn for them starts a new pair."""
        while True:
            await asyncio.sleep(interval)
            for worker in list(self.workers.values()):
                dead = worker.dead_role()
                if dead is not None:
                    await self._forget(worker, f"{dead[0]} exited with code {dead[1]}")

    async def _forget(self, worker: Worker, detail: str) -> None:
        self.workers.pop((worker.tenant, worker.workspace), None)
        worker.stop()
        log.warning("worker %s for %s/%s crashed: %s", worker.worker_id, worker.tenant, worker.workspace, detail)
        await self.report(worker, detail.split(" ", 1)[0], "crashed", detail)

    async def stop_all(self) -> None:
        for worker in list(self.workers.values()):
            worker.stop()
            for role in ROLES:
                await self.report(worker, role, "stopped", "broker shutting down")
        self.workers.clear()


def _json_list(values: list[str]) -> str:
    import json

    return json.dumps(list(values))
