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

from opentelemetry import trace

from caduceus_broker.domain import DispatchRefused, check_dispatch
from caduceus_broker.executor_secrets import ExecutorSecrets
from caduceus_broker.ledger import USED_DECISIONS_BUCKET, DecisionLedger, LedgerUnavailable
from caduceus_broker.settings import WorkerSettings
from caduceus_broker.worker_process import WorkerProcess, require_plugin
from caduceus_bus import (
    BusSettings,
    CredentialsUnreadable,
    EventConnection,
    Route,
    RouteTable,
    main_of,
    take_credentials,
)
from caduceus_contracts import (
    ReloadingKeyring,
    ToolCallCompleted,
    ToolCallDispatched,
    subjects,
    utcnow,
)
from caduceus_hermes_plugin import gate
from caduceus_telemetry.genai import execute_tool_attributes, execute_tool_span_name

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

    async def on_dispatched(self, event: ToolCallDispatched) -> None:
        """Verify the call's decision (and use it up), run the tool, report the outcome."""
        with tracer.start_as_current_span(execute_tool_span_name(event.tool),
                                          attributes=execute_tool_attributes(event.tool, event.call_id)):
            try:
                decision = await self._verify(event)
            except DispatchRefused as exc:
                log.warning("refused %s (%s): %s", event.call_id, event.tool, exc)
                await self._complete(event, "refused", reason=str(exc))
                await self.conn.refuse(subjects.tool_dispatched(event.tenant, event.workspace),
                                       b"", f"refused call {event.call_id}: {exc}")
                return
            async with self._slots:
                status, result = await asyncio.to_thread(self._run, event)
            log.info("ran %s for %s under decision %s: %s", event.tool, event.call_id, decision.decision_id, status)
            await self._complete(event, status, result=result)

    async def _verify(self, event: ToolCallDispatched):
        decision = check_dispatch(event, tenant=self.settings.tenant, workspace=self.settings.workspace,
                                  keyring=self.keyring, now=utcnow())
        try:
            claimed = await self.ledger.claim(decision.decision_id, event.call_id)
        except LedgerUnavailable as exc:
            raise DispatchRefused(str(exc)) from None
        if not claimed:
            raise DispatchRefused(f"decision {decision.decision_id} was already used (replay)")
        try:
            taken = await self.ledger.take_call(event.call_id, decision.decision_id)
        except LedgerUnavailable as exc:
            raise DispatchRefused(str(exc)) from None
        if not taken:
            raise DispatchRefused(f"call {event.call_id} was already taken: it ran under another decision, or its "
                                  "requester stopped waiting for a decision and was told it was denied")
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


# Every message the executor handles: the decided calls of its own tenant and workspace.
ROUTES = RouteTable(
    role="executor",
    worker=True,
    routes=(
        Route("cad.v1.tool.dispatched.{tenant}.{workspace}", ToolCallDispatched, Executor.on_dispatched,
              concurrency=8),
    ),
    publishes=(
        "cad.v1.tool.completed.{tenant}.{workspace}",
        # The ledger of used decisions: bind the bucket, write its own tenant/workspace's keys (never read back).
        f"$JS.API.STREAM.INFO.KV_{USED_DECISIONS_BUCKET}",
        f"$KV.{USED_DECISIONS_BUCKET}.{{tenant}}.{{workspace}}.>",
    ),
)


class ExecutorProcess(WorkerProcess):
    """An executor on the bus: runs decided calls, answers health, finishes the calls in hand on stop."""

    table = ROUTES

    def __init__(self, settings: WorkerSettings, bus: BusSettings, secrets: ExecutorSecrets) -> None:
        super().__init__(settings, bus)
        self.secrets = secrets
        self.ledger: DecisionLedger | None = None

    async def prepare(self, connection: EventConnection) -> Executor:
        self.ledger = await DecisionLedger.open(connection.js, self.settings.tenant, self.settings.workspace)
        log.info("executor %s ready for %s/%s", self.settings.worker_id, self.settings.tenant, self.settings.workspace)
        return Executor(self.settings, connection, self.ledger, self.secrets)



def build() -> ExecutorProcess:
    """Take the credential and secrets, make memory private, load Hermes's tools; refuse to run without the plugin."""
    settings = WorkerSettings()
    bus = take_credentials(BusSettings())
    secrets = ExecutorSecrets.receive(settings.secrets_fd)
    _keep_memory_private()
    secrets.apply_workspace()
    import model_tools  # noqa: F401 - import Hermes's tools (and load the plugin) before saying ready

    require_plugin("executor")
    return ExecutorProcess(settings, bus, secrets)


def _keep_memory_private() -> None:
    """Tools run as the same user as the executor: make its memory (and the secrets in it) theirs to read
    only through what it hands them, not through /proc or ptrace."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE = 4
        raise SystemExit("cannot make the executor's memory private (prctl PR_SET_DUMPABLE failed)")


main = main_of("executor", build, (CredentialsUnreadable, LedgerUnavailable))


if __name__ == "__main__":
    main()
