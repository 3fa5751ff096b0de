"""The planner: runs Hermes's agent loop for one tenant/workspace; every tool call goes to the bus.

`python -m caduceus_broker.planner`, started by the broker with HERMES_HOME set to
the planner's own profile. It holds the model credentials and no workspace.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from caduceus_broker.profiles import scope_home
from caduceus_broker.settings import ModelSettings, WorkerSettings
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
    ChatReply,
    GrantExpired,
    ReloadingKeyring,
    SessionGrant,
    SignatureError,
    TurnAssigned,
    subjects,
)
from caduceus_hermes_plugin import GatewayTimeouts, ToolGateway, fetch_mcp_tools, install_gateway, offer_mcp_tools

log = logging.getLogger("caduceus.planner")
tracer = trace.get_tracer("caduceus.planner")


class Planner:
    def __init__(self, settings: WorkerSettings, model: ModelSettings, conn: EventConnection, gateway: ToolGateway):
        self.settings = settings
        self.model = model
        self.conn = conn
        self.gateway = gateway
        # Per person and session: a session id another person reuses starts a conversation of their own.
        self.histories: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._session_locks: dict[str, asyncio.Lock] = {}

    async def on_turn(self, turn: TurnAssigned) -> None:
        """Run one turn to its reply (turns of one conversation one at a time)."""
        parent = otel_context.get_current()  # the consumer span of the turn's message, in the chat's trace
        session = turn.grant.grant.session_id
        try:
            grant = turn.grant.verify(self.gateway.keyring)
            if (grant.tenant, grant.workspace) != (self.settings.tenant, self.settings.workspace):
                raise SignatureError("the grant is for another tenant or workspace")
        except (SignatureError, GrantExpired) as exc:
            await self._reply(turn, "refused", f"this turn was refused: {exc}")
            return
        lock = self._session_locks.setdefault(session, asyncio.Lock())
        async with lock:  # one turn at a time per conversation
            self.gateway.bind_session(session, turn.grant, parent)
            try:
                with tracer.start_as_current_span("chat turn", context=parent):
                    mcp_tools = await fetch_mcp_tools(self.conn.nc, turn.grant, self.settings.decision_timeout_s * 2)
                    text = await asyncio.to_thread(self._run_agent, grant, turn.grant.as_api_key(), turn.text,
                                                   mcp_tools)
                await self._reply(turn, "ok", text)
            except Exception as exc:
                log.exception("turn failed")
                await self._reply(turn, "error", f"the agent failed: {type(exc).__name__}: {exc}")
            finally:
                self.gateway.unbind_session(session)

    def _run_agent(self, grant: SessionGrant, api_key: str, text: str, mcp_tools: tuple = ()) -> str:
        """One turn of Hermes in the grant's memory scope (its own Hermes home, for this thread only)."""
        from hermes_constants import get_process_hermes_home, reset_hermes_home_override, set_hermes_home_override

        home = scope_home(get_process_hermes_home(), grant.memory_scope)
        scoped = set_hermes_home_override(home)
        try:
            return self._converse(grant.user, grant.session_id, api_key, text, offer_mcp_tools(mcp_tools))
        finally:
            reset_hermes_home_override(scoped)

    def _converse(self, user: str, session: str, api_key: str, text: str, mcp_toolsets: list[str] = ()) -> str:
        """One turn of Hermes; its model calls go to the inference gateway with the turn's grant as the API key
        (the gateway asks policy for each call and reports the upstream's real usage)."""
        from run_agent import AIAgent

        agent = AIAgent(
            base_url=self.model.base_url,
            api_key=api_key,
            provider="custom",
            api_mode="chat_completions",
            model=self.model.name,
            enabled_toolsets=[*self.settings.toolsets, *mcp_toolsets],
            session_id=session,
            quiet_mode=True,
            max_iterations=self.settings.max_iterations,
            skip_context_files=True,
            platform="caduceus",
        )
        result = agent.run_conversation(text, conversation_history=self.histories.get((user, session)))
        messages = result.get("messages")
        if isinstance(messages, list):
            self.histories[(user, session)] = messages
        return str(result.get("final_response") or "")

    async def _reply(self, turn: TurnAssigned, status: str, text: str) -> None:
        session = turn.grant.grant.session_id
        reply = ChatReply(tenant=turn.tenant, message_id=turn.message_id, session_id=session, status=status, text=text)
        await self.conn.publish(subjects.chat_reply(turn.tenant, session), reply)


# Every message the planner handles itself; its gateway follows decisions and outcomes (GATEWAY_ROUTES).
ROUTES = RouteTable(
    role="planner",
    worker=True,
    routes=(
        # several conversations at once; one conversation's turns wait for each other (Planner's session locks)
        Route("cad.v1.turn.assigned.{tenant}.{workspace}", TurnAssigned, Planner.on_turn, concurrency=8),
    ),
    publishes=("cad.v1.chat.reply.{tenant}.*",
               "caduceus.mcp.tools.{tenant}.{workspace}"),  # asks the MCP gateway which MCP tools to offer
)


class PlannerProcess(WorkerProcess):
    """A planner on the bus: its turns, its gateway, its health."""

    table = ROUTES

    def __init__(self, settings: WorkerSettings, bus: BusSettings, model: ModelSettings) -> None:
        super().__init__(settings, bus)
        self.model = model
        self.gateway: ToolGateway | None = None

    async def prepare(self, connection: EventConnection) -> Planner:
        settings = self.settings
        self.gateway = ToolGateway(connection, asyncio.get_running_loop(), tenant=settings.tenant,
                                   workspace=settings.workspace, keyring=ReloadingKeyring(settings.keys_dir),
                                   timeouts=GatewayTimeouts(settings.decision_timeout_s, settings.completion_timeout_s))
        await self.gateway.start()
        install_gateway(self.gateway)
        log.info("planner %s ready for %s/%s", settings.worker_id, settings.tenant, settings.workspace)
        return Planner(settings, self.model, connection, self.gateway)

    async def cleanup(self) -> None:
        install_gateway(None)
        if self.gateway is not None:
            await self.gateway.stop()


def build() -> PlannerProcess:
    """Load Hermes (and with it the Caduceus plugin) before joining the bus; refuse to run without the plugin."""
    import run_agent  # noqa: F401 - import Hermes (and load the plugin) before saying ready

    require_plugin("planner")
    return PlannerProcess(WorkerSettings(), take_credentials(BusSettings()), ModelSettings())


main = main_of("planner", build, (CredentialsUnreadable,))


if __name__ == "__main__":
    main()
