"""The executor: runs Hermes's own tool implementations on the workspace, only for verified decisions.

`python -m caduceus_broker.executor`, started by the broker in its sandbox, in the
workspace directory with HERMES_HOME set to the executor's own profile. It holds the
workspace and no model credentials, and the secrets its sandbox policy injects.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
from pathlib import Path

from nats.aio.msg import Msg
from opentelemetry import context as otel_context
from opentelemetry import trace

from caduceus_broker.domain import DispatchRefused, check_dispatch
from caduceus_broker.executor_secrets import ExecutorSecrets
from caduceus_broker.ledger import DecisionLedger
from caduceus_broker.runtime import answer_health, health_subject
from caduceus_broker.settings import WorkerSettings
from caduceus_bus import BusSettings, EventConnection, excerpt, extract_context, stop_event, take_credentials
from caduceus_contracts import (
    ContractError,
    ErrorEvent,
    ReloadingKeyring,
    ToolCallCompleted,
    ToolCallDispatched,
    parse_event,
    subjects,
    utcnow,
)
from caduceus_hermes_plugin import gate
from caduceus_telemetry import setup_telemetry, shutdown_telemetry

log = logging.getLogger("caduceus.executor")
tracer = trace.get_tracer("caduceus.executor")
SERVICE = "executor"


class Executor:
    def __init__(self, settings: WorkerSettings, conn: EventConnection, ledger: DecisionLedger,
                 secrets: ExecutorSecrets | None = None) -> None:
        self.settings = settings
        self.conn = conn
        self.ledger = ledger
        self.secrets = secrets or ExecutorSecrets([])
        self.keyring = ReloadingKeyring(settings.keys_dir)
        # A call-scoped secret is a file any concurrent call could read: such calls run one at a time.
        self._slots = asyncio.Semaphore(1 if self.secrets.has_call_secrets else 8)

    async def on_dispatched(self, msg: Msg) -> None:
        try:
            event = parse_event(msg.data, expect=ToolCallDispatched, subject=msg.subject)
        except ContractError as exc:
            await self._error(msg.subject, msg.data, str(exc))
            return
        asyncio.create_task(self._handle(event, extract_context(msg.headers)))

    async def _handle(self, event: ToolCallDispatched, parent: otel_context.Context) -> None:
        with tracer.start_as_current_span(f"execute_tool {event.tool}", context=parent,
                                          attributes={"gen_ai.tool.name": event.tool,
                                                      "gen_ai.tool.call.id": event.call_id}):
            try:
                decision = self._verify(event)
            except DispatchRefused as exc:
                log.warning("refused %s (%s): %s", event.call_id, event.tool, exc)
                await self._complete(event, "refused", reason=str(exc))
                await self._error(subjects.tool_dispatched(event.tenant, event.workspace), b"", f"refused call "
                                  f"{event.call_id}: {exc}")
                return
            async with self._slots:
                status, result = await asyncio.to_thread(self._run, event)
            log.info("ran %s for %s under decision %s: %s", event.tool, event.call_id, decision.decision_id, status)
            await self._complete(event, status, result=result)

    def _verify(self, event: ToolCallDispatched):
        decision = check_dispatch(event, tenant=self.settings.tenant, workspace=self.settings.workspace,
                                  keyring=self.keyring, now=utcnow())
        if not self.ledger.claim(decision.decision_id, event.call_id):
            raise DispatchRefused(f"decision {decision.decision_id} was already used (replay)")
        return decision

    def _run(self, event: ToolCallDispatched) -> tuple[str, str]:
        from model_tools import handle_function_call

        try:
            with self.secrets.for_call(event.tool), gate.authorized(event.tool, event.args):
                result = handle_function_call(event.tool, dict(event.args), task_id=event.session_id,
                                              tool_call_id=event.call_id, session_id=event.session_id,
                                              enabled_toolsets=list(self.settings.toolsets))
        except Exception as exc:
            return "error", self.secrets.scrub(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return "ok", self.secrets.scrub(result if isinstance(result, str) else json.dumps(result, default=str))

    async def _complete(self, event: ToolCallDispatched, status: str, *, result: str = "", reason: str = "") -> None:
        completed = ToolCallCompleted.of(event, status, result=result, reason=reason,
                                         executed_by=self.settings.worker_id if status in ("ok", "error") else None)
        # A refused call may name another tenant or workspace; its outcome stays on this executor's own.
        completed = completed.model_copy(update={"tenant": self.settings.tenant, "workspace": self.settings.workspace})
        await self.conn.publish(subjects.tool_completed(self.settings.tenant, self.settings.workspace), completed)

    async def _error(self, subject: str, body: bytes, reason: str) -> None:
        error = ErrorEvent(tenant=self.settings.tenant, service=SERVICE, subject=subject[:512], reason=reason[:1000],
                           excerpt=excerpt(body))
        await self.conn.publish(subjects.error(self.settings.tenant, SERVICE), error)


async def serve(settings: WorkerSettings) -> None:
    bus = take_credentials(BusSettings())
    secrets = ExecutorSecrets.receive(settings.secrets_fd)
    _keep_memory_private()
    secrets.apply_workspace()
    import model_tools  # noqa: F401 - import Hermes's tools (and load the plugin) before saying ready
    from hermes_cli.plugins import discover_plugins, has_middleware

    discover_plugins()
    if not has_middleware("tool_execution"):
        raise SystemExit("the Caduceus plugin did not load in this executor's Hermes profile; refusing to run")
    conn = await EventConnection.connect(bus, name=f"executor-{settings.tenant}-{settings.workspace}")
    ledger = DecisionLedger(_ledger_path())
    executor = Executor(settings, conn, ledger, secrets)
    stop = stop_event()
    await conn.subscribe(subjects.tool_dispatched(settings.tenant, settings.workspace), executor.on_dispatched)
    await answer_health(conn.nc, health_subject(settings.tenant, settings.workspace, "executor"))
    log.info("executor %s ready for %s/%s", settings.worker_id, settings.tenant, settings.workspace)
    await stop.wait()
    await conn.close()
    ledger.close()


def _keep_memory_private() -> None:
    """Tools run as the same user as the executor: make its memory (and the secrets in it) theirs to read
    only through what it hands them, not through /proc or ptrace."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE = 4
        raise SystemExit("cannot make the executor's memory private (prctl PR_SET_DUMPABLE failed)")


def _ledger_path() -> Path:
    from hermes_constants import get_hermes_home

    return get_hermes_home() / "caduceus-used-decisions.sqlite3"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    provider = setup_telemetry("executor")
    try:
        asyncio.run(serve(WorkerSettings()))
    finally:
        shutdown_telemetry(provider)


if __name__ == "__main__":
    main()
