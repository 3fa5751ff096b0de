"""Planner and executor processes, one sandboxed pair per tenant/workspace, and their lifecycle.

A pair starts on first use, in the sandbox its tenant/workspace's policy describes (the
planner gets the model credentials and no workspace; the executor gets the workspace and
no model credentials). The pool stops a pair that has been idle too long, refuses a new
pair when the tenant already runs its cap, and notices a pair that died: its turns and
calls in flight are failed by the broker (never left hanging) and the next turn starts a
fresh pair. Each of these is reported as a WorkerLifecycle event.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from caduceus_broker.bus_access import WorkerBusAccess
from caduceus_broker.ledger import create_ledger
from caduceus_broker.profiles import worker_paths, write_profile
from caduceus_broker.sandboxing import SandboxedProcess, Sandboxes, WorkerEndpoints
from caduceus_broker.settings import BrokerSettings, ModelSettings
from caduceus_bus import BusSettings, CredentialError, worker_health_subject
from caduceus_contracts import ToolCallDispatched, TurnRequested, new_id
from caduceus_sandbox import BwrapBackend, ChannelError, PolicyError, PolicyFiles, SandboxUnavailable
from caduceus_telemetry import TelemetrySettings

log = logging.getLogger("caduceus.broker.workers")
ROLES = ("planner", "executor")
# Variables a worker inherits from the broker; everything else is set explicitly.
# The trace endpoint is pointed at the sandbox's channel for it.
_PASSTHROUGH = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV", "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_BSP_SCHEDULE_DELAY")


class WorkerStartFailed(RuntimeError):
    """A worker could not start (refused policy, no sandbox, not ready); the message says why and what to do."""


class WorkerCapped(WorkerStartFailed):
    """The tenant already runs as many workers as it may."""


@dataclass
class Worker:
    tenant: str
    workspace: str
    worker_id: str
    processes: dict[str, SandboxedProcess] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    policy_path: Path | None = None
    turns: dict[str, TurnRequested] = field(default_factory=dict)
    calls: dict[str, ToolCallDispatched] = field(default_factory=dict)
    last_active: float = field(default_factory=time.monotonic)

    @property
    def busy(self) -> bool:
        return bool(self.turns or self.calls)

    def touch(self) -> None:
        self.last_active = time.monotonic()

    def dead_role(self) -> tuple[str, int] | None:
        for role, proc in self.processes.items():
            code = proc.poll()
            if code is not None:
                return role, code
        return None

    async def stop(self, grace: float = 5.0) -> None:
        for proc in self.processes.values():
            proc.terminate()
        deadline = time.monotonic() + grace
        for proc in self.processes.values():
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            proc.kill()
            await proc.close()


LifecycleReporter = Callable[[Worker, str, str, str], Awaitable[None]]


class WorkerPool:
    def __init__(self, settings: BrokerSettings, bus: BusSettings, model: ModelSettings, nc: Client,
                 report: LifecycleReporter, *, backend: BwrapBackend | None = None) -> None:
        self.settings = settings
        self.bus = bus
        self.model = model
        self.nc = nc
        self.report = report
        self.policies = PolicyFiles(settings.sandbox_policy_file, settings.sandbox_policies)
        self.backend = backend or BwrapBackend((settings.sandbox_uid, settings.sandbox_gid))
        self.sandboxes = Sandboxes(self.backend, WorkerEndpoints(
            bus.nats_url, model.base_url, TelemetrySettings().otel_exporter_otlp_endpoint), settings.keys)
        self.bus_access = WorkerBusAccess(bus, settings.nats_worker_signing)
        self.workers: dict[tuple[str, str], Worker] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._ledger_ready = False

    async def ensure(self, tenant: str, workspace: str) -> Worker:
        """The running worker of a tenant/workspace, started (or restarted) if needed.

        Raises WorkerStartFailed (or WorkerCapped) with a message for the person who asked.
        """
        key = (tenant, workspace)
        async with self._locks.setdefault(key, asyncio.Lock()):
            worker = self.workers.get(key)
            if worker is not None:
                dead = worker.dead_role()
                if dead is None:
                    worker.touch()
                    return worker
                await self.lost(worker, f"the {dead[0]} exited with code {dead[1]}")
            running = sum(1 for t, _ in self.workers if t == tenant)
            if running >= self.settings.max_workers_per_tenant:
                refused = Worker(tenant, workspace, new_id()[:12])
                detail = (f"tenant {tenant} already runs {running} agent(s), its cap "
                          f"(CADUCEUS_MAX_WORKERS_PER_TENANT={self.settings.max_workers_per_tenant}); "
                          "try again when one has been idle, or raise the cap")
                await self.report(refused, "planner", "capped", detail)
                raise WorkerCapped(detail)
            worker = await self._start(tenant, workspace)
            self.workers[key] = worker
            return worker

    def find(self, tenant: str, workspace: str) -> Worker | None:
        return self.workers.get((tenant, workspace))

    async def _start(self, tenant: str, workspace: str) -> Worker:
        worker = Worker(tenant, workspace, new_id()[:12])
        if not self._ledger_ready:  # executors bind the bucket of used decisions; it must exist before them
            try:
                await create_ledger(self.nc.jetstream(), self.settings.used_decisions_replicas)
                self._ledger_ready = True
            except Exception as exc:
                detail = f"the bucket of used decisions cannot be created ({type(exc).__name__}: {exc})"
                await self.report(worker, "executor", "refused", detail)
                raise WorkerStartFailed(detail) from None
        try:
            policy, worker.policy_path = self.policies.policy_for(tenant, workspace)
            self.backend.available()
            self.backend.check(policy)
        except (PolicyError, SandboxUnavailable) as exc:
            where = f" ({worker.policy_path})" if worker.policy_path else ""
            detail = f"the sandbox for {tenant}/{workspace}{where} was refused: {exc}"
            await self.report(worker, "planner", "refused", detail)
            raise WorkerStartFailed(detail) from None
        paths = worker_paths(self.settings.workers, self.settings.workspaces, tenant, workspace)
        paths["workspace"].mkdir(parents=True, exist_ok=True)
        paths["logs"].mkdir(parents=True, exist_ok=True)
        try:
            for role in ROLES:
                home = write_profile(paths[f"{role}_home"])
                env = {**self._environment(worker, role, home, paths["workspace"]),
                       **self._bus_environment(worker, role, home)}
                log_path = paths["logs"] / f"{role}.log"
                with open(log_path, "ab") as log_file:
                    worker.processes[role] = await self.sandboxes.start(
                        role, policy, env=env, home=home,
                        workspace=paths["workspace"] if role == "executor" else None, log_file=log_file)
                worker.logs[role] = log_path
            for role in ROLES:
                await self._wait_ready(worker, role)
        except (WorkerStartFailed, PolicyError, ChannelError, OSError) as exc:
            await worker.stop()
            await self.report(worker, "planner", "refused", str(exc))
            raise WorkerStartFailed(str(exc)) from None
        for role in ROLES:
            await self.report(worker, role, "started",
                              f"pid {worker.processes[role].pid}, sandbox policy {worker.policy_path or 'built-in'}")
        return worker

    def _environment(self, worker: Worker, role: str, home: Path, workspace_dir: Path) -> dict[str, str]:
        env = {k: os.environ[k] for k in _PASSTHROUGH if k in os.environ}
        env.update({
            "HERMES_HOME": str(home),
            "HOME": str(home),
            "PYTHONUNBUFFERED": "1",
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

    def _bus_environment(self, worker: Worker, role: str, home: Path) -> dict[str, str]:
        """The worker's own bus credential, written into its home: the one host directory its sandbox mounts.

        The worker reads it and removes it as it starts, so tools it runs later cannot take it.
        """
        try:
            return self.bus_access.environment(role, worker.tenant, worker.workspace, worker.worker_id,
                                               home / ".caduceus-bus")
        except CredentialError as exc:
            raise WorkerStartFailed(f"the {role} for {worker.tenant}/{worker.workspace} has no bus credential: "
                                    f"{exc}") from None

    async def _wait_ready(self, worker: Worker, role: str) -> None:
        subject = worker_health_subject(role, worker.tenant, worker.workspace)
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
        """Report workers that died (the next turn starts a new pair) and stop idle ones."""
        while True:
            await asyncio.sleep(interval)
            await self.sweep()

    async def sweep(self) -> None:
        now = time.monotonic()
        for worker in list(self.workers.values()):
            dead = worker.dead_role()
            if dead is not None:
                await self.lost(worker, f"the {dead[0]} exited with code {dead[1]}")
            elif not worker.busy and now - worker.last_active > self.settings.idle_timeout_s:
                await self._retire(worker, "idle-stopped",
                                   f"idle for {self.settings.idle_timeout_s:g} s (CADUCEUS_IDLE_TIMEOUT_S)")

    async def lost(self, worker: Worker, detail: str) -> None:
        """A process of the pair died: stop the other, and report the crash (the broker fails its work)."""
        if self.workers.get((worker.tenant, worker.workspace)) is not worker:
            return
        del self.workers[(worker.tenant, worker.workspace)]
        await worker.stop()
        log.warning("worker %s for %s/%s crashed: %s", worker.worker_id, worker.tenant, worker.workspace, detail)
        await self.report(worker, detail.split(" ")[1], "crashed", detail)

    async def retire(self, worker: Worker, state: str, detail: str) -> None:
        """Stop a pair on purpose (idle, lease lost, shutting down) and report it."""
        await self._retire(worker, state, detail)

    async def _retire(self, worker: Worker, state: str, detail: str) -> None:
        self.workers.pop((worker.tenant, worker.workspace), None)
        await worker.stop()
        for role in ROLES:
            await self.report(worker, role, state, detail)

    async def stop_all(self) -> None:
        for worker in list(self.workers.values()):
            await self._retire(worker, "stopped", "broker shutting down")
        self.sandboxes.close()


def _json_list(values: list[str]) -> str:
    import json

    return json.dumps(list(values))
