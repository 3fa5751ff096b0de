"""Wiring: registry, pins, secrets and keys around the route table in handlers.py, plus the request subjects.

Built the same way by `__main__` and tests: `build(settings)` then `await service.start()`.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from caduceus_bus import BusService, CallClaims, EventConnection
from caduceus_contracts import Event, ReloadingKeyring, SignedGrant, ToolsReachAnswer, ToolsReachQuery, subjects
from caduceus_directory import DirectorySource
from caduceus_mcp.egress import UpstreamEgress
from caduceus_mcp.endpoint import McpEndpoint, issuer_lookup, start_endpoint
from caduceus_mcp.gateway import McpGateway, RegistryFile
from caduceus_mcp.handlers import ROUTES, answer_facts, answer_tools
from caduceus_mcp.pins import PinStore
from caduceus_mcp.sandbox import StdioSandbox
from caduceus_mcp.settings import McpSettings
from caduceus_mcp.upstream import Launcher, SecretStore, SessionPool, plain_launcher
from caduceus_sandbox import PolicyFiles

log = logging.getLogger(__name__)


class McpService(BusService):
    """The MCP gateway on the bus: governed calls, tool lists, facts for policy."""

    table = ROUTES

    def __init__(self, settings: McpSettings, launcher: Launcher | None = None) -> None:
        super().__init__(settings)
        self.settings = settings
        self.keyring = ReloadingKeyring(settings.keys_dir)
        self.gateway = McpGateway(
            registry=RegistryFile(settings.registry_file), pins=PinStore(settings.pins_url),
            secrets=SecretStore(settings.secrets_dir), keyring=self.keyring, publish=self._publish,
            launcher=launcher or stdio_launcher(settings), egress=UpstreamEgress(sandbox_policies(settings)),
            may_use=self.may_use, call_timeout_s=settings.call_timeout_s,
            list_timeout_s=settings.list_timeout_s, max_result_bytes=settings.max_result_bytes,
            listing_ttl_s=max(30.0, 6 * settings.listing_refresh_s), sessions=SessionPool(settings.session_idle_s))
        self.endpoint: McpEndpoint | None = None
        # An upstream call in hand when stopping is answered: it can take the whole call bound.
        self.drain_s = settings.call_timeout_s + settings.list_timeout_s + 5

    async def may_use(self, grant: SignedGrant, tools: list[str]) -> set[str]:
        """The tools policy could ever allow for the grant's person; none when policy does not answer."""
        query = ToolsReachQuery(grant=grant, tools=tuple(tools))
        try:
            reply = await self._connected().nc.request(subjects.policy_reachable(grant.grant.tenant),
                                                       query.model_dump_json().encode(),
                                                       timeout=self.settings.policy_timeout_s)
            return set(ToolsReachAnswer.model_validate_json(reply.data).tools)
        except Exception as exc:
            log.warning("policy did not say which MCP tools %s may use (%s): listing none", grant.grant.user,
                        type(exc).__name__)
            return set()

    async def _publish(self, subject: str, event: Event) -> None:
        await self.publish(subject, event)

    async def prepare(self, connection: EventConnection) -> McpGateway:
        nc = connection.nc
        self.gateway.calls = CallClaims(connection.js)
        await nc.subscribe(subjects.MCP_TOOLS_ALL, queue="mcp", cb=partial(answer_tools, self.gateway, self.keyring))
        await nc.subscribe(subjects.MCP_FACTS_ALL, queue="mcp", cb=partial(answer_facts, self.gateway))
        self.background(self._audit_loop(), "mcp audit of registry and pin changes")
        self.background(self._listing_loop(), "mcp listings of the registered servers")
        if self.settings.endpoint_port is not None:
            self.endpoint = await self._serve_endpoint(connection)
        return self.gateway

    async def _audit_loop(self) -> None:
        """Registry edits and pin revocations (by hand or by the CLI) become audited events, within a second."""
        snapshot = self.settings.state_dir / ".mcp-registry.audited.yaml"
        while True:
            try:
                await self.gateway.audit_changes(snapshot)
            except Exception:
                log.exception("could not audit MCP registry or pin changes; trying again")
            await asyncio.sleep(self.settings.reload_interval_s)

    async def _listing_loop(self) -> None:
        """Every registered server listed again every `listing_refresh_s` (a new one within a second)."""
        while True:
            try:
                await self.gateway.refresh_listings(older_than_s=self.settings.listing_refresh_s)
                await self.gateway.sessions.close_idle()
            except Exception:
                log.exception("could not list the registered MCP servers; trying again")
            await asyncio.sleep(self.settings.reload_interval_s)

    async def _serve_endpoint(self, connection: EventConnection) -> McpEndpoint:
        """The MCP endpoint for other clients (endpoint.py): the same tool lists and governed calls."""
        s = self.settings
        assert s.endpoint_port is not None
        return await start_endpoint(
            connection, self.keyring, self.gateway.tools_for, host=s.endpoint_host, port=s.endpoint_port,
            public_url=s.endpoint_url, issuer_for=issuer_lookup(DirectorySource(s.tenants_file), s.oidc_issuer_url),
            decision_timeout_s=s.endpoint_decision_timeout_s, approval_wait_s=s.endpoint_approval_wait_s,
            call_timeout_s=s.call_timeout_s + 15, shared=s.shared_ports, drain_s=s.endpoint_drain_s)

    async def quiesce(self) -> None:
        """On SIGTERM, with the bus and the routes still running: the MCP endpoint takes no new request, and the
        calls in progress get `endpoint_drain_s` for their decisions and outcomes to arrive and reach their
        clients (an upstream call dispatched here meanwhile is still run)."""
        if self.endpoint is not None:
            await self.endpoint.stop()

    async def cleanup(self) -> None:
        if self.endpoint is not None:
            await self.endpoint.stop()
        await self.gateway.sessions.close_all()
        await self.gateway.egress.close()
        self.gateway.pins.close()


def stdio_launcher(settings: McpSettings) -> Launcher:
    """Bubblewrap with a profile from the tenant's sandbox policy, unless turned off (`sandbox_stdio`)."""
    if not settings.sandbox_stdio:
        log.warning("stdio MCP servers run without a sandbox (CADUCEUS_SANDBOX_STDIO=false)")
        return plain_launcher
    return StdioSandbox(sandbox_policies(settings))


def sandbox_policies(settings: McpSettings) -> PolicyFiles:
    """The tenants' sandbox policies (the broker's): stdio servers' sandboxes and HTTP servers' egress rules."""
    default = settings.sandbox_file or settings.state_dir / "sandbox.yaml"
    per_tenant = (settings.sandbox_file.parent if settings.sandbox_file else settings.state_dir) / "sandboxes"
    return PolicyFiles(default, per_tenant)


def build(settings: McpSettings | None = None) -> McpService:
    """The gateway service from its settings (the environment when none are given)."""
    return McpService(settings or McpSettings())
