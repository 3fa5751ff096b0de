"""The governed path to upstream MCP tools: what a person may see, the facts policy decides on, and the call.

A call reaches an upstream only through `McpGateway.call`, which first verifies the signed decision for the
exact digest (signed by policy or approval, allow, this call, unexpired, never used before), then checks the
tool's definition against its pin in the same upstream session it calls in. Everything that fails is an
error or denied result saying why: never an unchecked call, never a hang.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import jsonschema
from sqlalchemy import Column, DateTime, String, Table
from sqlalchemy.exc import IntegrityError

from caduceus_bus import CallClaims, ClaimUnknown
from caduceus_contracts import (
    CanonicalizationError,
    Decision,
    Event,
    Keyring,
    McpDefinitionChanged,
    McpFactsQuery,
    McpPinChanged,
    McpServerChanged,
    McpToolFacts,
    McpToolsAnswer,
    McpToolView,
    SessionGrant,
    SignatureError,
    SignedGrant,
    ToolCallCompleted,
    ToolCallDispatched,
    call_digest,
    subjects,
)
from caduceus_mcp.definitions import Definition, definition_diff, hide_credentials
from caduceus_mcp.egress import EgressDenied, UpstreamEgress
from caduceus_mcp.pins import METADATA, Pin, PinStore, create_tables
from caduceus_mcp.registry import (
    Registry,
    RegistryError,
    Server,
    load_registry,
    save_registry,
    split_tool_name,
    tool_name,
)
from caduceus_mcp.upstream import (
    EgressError,
    Launcher,
    SecretStore,
    SessionPool,
    Upstream,
    UpstreamError,
    call,
    list_definitions,
    plain_launcher,
)
from caduceus_redaction import redact_text

log = logging.getLogger(__name__)
EXECUTED_BY = "mcp-gateway"
# The fact name under which policy shows an approver the definition digest they approve (see facts()).
DEFINITION_FACT = "mcp_definition"
PinState = Literal["pinned", "unpinned", "changed"]

USED = Table("mcp_used_decisions", METADATA,
             Column("decision_id", String(128), primary_key=True),
             Column("call_id", String(128), nullable=False),
             Column("used_at", DateTime(timezone=True), nullable=False))


class CallRefused(Exception):
    """The call cannot go upstream; the message says why (it becomes a denied result)."""


@dataclass(frozen=True)
class Entry:
    """One upstream tool for one tenant/workspace: its definition as served now and its pin state."""

    server: Server
    definition: Definition
    state: PinState
    pin: Pin | None

    @property
    def name(self) -> str:
        return tool_name(self.server.name, self.definition.name)


class RegistryFile:
    """The registry file, read again when it changes; a broken edit keeps the last good registry (and says so)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.registry = Registry()
        self.problem: str | None = None
        self._stamp: tuple[int, int] | None = None
        self.refresh()

    def refresh(self) -> bool:
        """Read the file again when it changed; True when the registry in use changed."""
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and self._stamp is not None:
            return False
        self._stamp = stamp
        try:
            registry = load_registry(self.path)
        except RegistryError as exc:
            self.problem = str(exc)
            log.error("MCP registry not reloaded, keeping the last good one: %s", exc)
            return False
        self.problem = None
        changed = registry != self.registry
        self.registry = registry
        return changed


Publish = Callable[[str, Event], Awaitable[None]]


async def _no_publish(subject: str, event: Event) -> None:
    log.debug("not connected: %s not published", event.kind)


@dataclass
class McpGateway:
    """Registry, pins, secrets and keys: everything a governed MCP call needs."""

    registry: RegistryFile
    pins: PinStore
    secrets: SecretStore
    keyring: Keyring
    publish: Publish = _no_publish
    launcher: Launcher = plain_launcher
    # The tenants' egress rules for HTTP upstreams (default: none reached, like a tenant without a policy).
    egress: UpstreamEgress = field(default_factory=UpstreamEgress)
    call_timeout_s: float = 30.0
    list_timeout_s: float = 10.0
    max_result_bytes: int = 100_000
    # Which of these tool names the policy could ever allow for this grant's person (None: no filter).
    may_use: Callable[[SignedGrant, list[str]], Awaitable[set[str]]] | None = None
    # How long a listing answers tool lists and policy's facts (refresh_listings keeps it younger than that).
    listing_ttl_s: float = 30.0
    # Definition changes already reported: (tenant, workspace, server, tool, served digest).
    _reported: set[tuple[str, str, str, str, str]] = field(default_factory=set)
    # A server nobody asked for (lists, facts, calls) for this long is not listed in the background.
    idle_after_s: float = 600.0
    # The last listing of each server: (tenant, server) -> (when, the server as registered, its definitions).
    _listings: dict[tuple[str, str], tuple[float, Server, list[Definition]]] = field(default_factory=dict)
    # The last attempt to list each server, and when it was last asked for.
    _tried: dict[tuple[str, str], tuple[float, Server]] = field(default_factory=dict)
    _asked: dict[tuple[str, str], float] = field(default_factory=dict)
    # Live sessions with stdio servers, kept between calls (upstream.SessionPool).
    sessions: SessionPool = field(default_factory=SessionPool)
    # The bus's ledger of calls (caduceus_bus.claims), set once connected: a call runs only if taken there first.
    calls: CallClaims | None = None

    def __post_init__(self) -> None:
        create_tables(self.pins.engine)

    async def audit_changes(self, snapshot: Path | None = None) -> int:
        """Publish what changed since the last audit: servers added, changed or removed in the registry (compared
        with the registry last audited, kept in `snapshot`), and pins revoked outside the gateway. Returns how many
        events were published; an event not published stays due for the next round."""
        published = 0
        self.registry.refresh()
        current = self.registry.registry
        if snapshot is not None:
            try:
                before = load_registry(snapshot)
            except RegistryError:
                before = Registry()
            for event in registry_changes(before, current):
                await self.publish(subjects.mcp_event("server", event.tenant), event)
                published += 1
            if before != current:
                save_registry(snapshot, current)
        for revocation in self.pins.pending_revocations():
            pin = revocation.pin
            await self.publish(subjects.mcp_event("pin", pin.tenant), McpPinChanged(
                tenant=pin.tenant, action="revoked", actor=revocation.actor, server=pin.server, tool=pin.tool,
                workspace=pin.workspace, digest=pin.digest))
            self.pins.published(revocation.id)
            published += 1
        return published

    def upstream(self, server: Server, workspace: str = "") -> Upstream:
        """How to reach `server` for a call or listing in `workspace`, whose egress rules an HTTP server is reached
        by ("": the tenant's own rules)."""
        return Upstream(server, self.secrets, self.launcher, connect_timeout_s=self.list_timeout_s,
                        egress=self.egress, workspace=workspace)

    def credentials(self, server: Server) -> list[str]:
        """The values of the server's credentials (to take them out of whatever the server sends back)."""
        return self.secrets.values(server.tenant, server.credentials.secret_names())

    async def served(self, server: Server, client: Any) -> list[Definition]:
        """The server's tool definitions as served, without its credentials' values (see Definition.without)."""
        credentials = self.credentials(server)
        return [d.without(credentials) for d in await list_definitions(client, self.list_timeout_s)]

    # --- what a person sees -------------------------------------------------

    async def catalog(self, tenant: str, workspace: str) -> tuple[list[Entry], list[str]]:
        """Every tool the tenant's workspace is registered for, with its pin state, and the servers that failed."""
        self.registry.refresh()
        servers = self.registry.registry.for_workspace(tenant, workspace)
        results = await asyncio.gather(*(self._server_entries(s, workspace) for s in servers), return_exceptions=True)
        entries: list[Entry] = []
        problems: list[str] = []
        for server, result in zip(servers, results, strict=True):
            if isinstance(result, BaseException):
                problems.append(scrub(f"{server.name}: {result}", self.credentials(server)))
            else:
                entries += result
        return entries, problems

    async def _server_entries(self, server: Server, workspace: str) -> list[Entry]:
        await self.check_egress(server, workspace)
        return [await self.entry(server, workspace, d) for d in await self.definitions(server, workspace)]

    async def check_egress(self, server: Server, workspace: str) -> None:
        """EgressError when the workspace's egress rules refuse this HTTP server: it is then neither listed nor
        vouched for there, even though its listing (kept per server, made under the tenant's rules) exists."""
        if server.transport == "http":
            try:
                await self.egress.proxy_for(server.tenant, workspace, server.url)
            except EgressDenied as exc:
                raise EgressError(f"MCP server {server.name} is not reached: {exc}") from None

    async def definitions(self, server: Server, workspace: str = "") -> list[Definition]:
        """The server's tool definitions for lists and policy's facts: its listing of the last `listing_ttl_s`,
        else a new one. Starting a stdio server (and the SDK) takes seconds, longer than a planner's turn or
        policy's decision may wait; the call itself always checks the definition it calls, in its own session."""
        key = (server.tenant, server.name)
        self._asked[key] = time.monotonic()
        listed = self._listings.get(key)
        if listed is not None and listed[1] == server and time.monotonic() - listed[0] < self.listing_ttl_s:
            return listed[2]
        return await self._list(server, workspace)

    async def _list(self, server: Server, workspace: str = "") -> list[Definition]:
        key, started = (server.tenant, server.name), time.monotonic()
        self._tried[key] = (started, server)
        try:
            async with self.sessions.session(self.upstream(server, workspace)) as client:
                definitions = await self.served(server, client)
        except BaseException:
            self._listings.pop(key, None)  # unreachable now: nothing listed or vouched for from memory
            raise
        self._remember(server, definitions, started)
        return definitions

    def _remember(self, server: Server, definitions: list[Definition], started: float) -> None:
        """Keep a listing, as of when its session started (what the server served is no newer than that)."""
        self._listings[(server.tenant, server.name)] = (started, server, definitions)

    async def refresh_listings(self, older_than_s: float = 0.0) -> int:
        """List again every registered server in use (asked for within `idle_after_s`) last tried more than
        `older_than_s` ago, and every new or changed registration; forget servers no longer registered. So lists
        and facts answer from memory with what the servers serve now, and an idle server is not started over and
        over. Returns how many servers could not be listed."""
        self.registry.refresh()
        servers = {(t, n): s for t, named in self.registry.registry.servers.items() for n, s in named.items()}
        for table in (self._listings, self._tried, self._asked):
            for key in set(table) - set(servers):
                del table[key]
        now = time.monotonic()

        def is_due(key: tuple[str, str], server: Server) -> bool:
            tried = self._tried.get(key)
            if tried is None or tried[1] != server:
                return True
            in_use = now - self._asked.get(key, -self.idle_after_s) < self.idle_after_s
            return in_use and now - tried[0] >= older_than_s

        due = [s for key, s in servers.items() if is_due(key, s)]
        results = await asyncio.gather(*(self._list(s) for s in due), return_exceptions=True)
        return sum(1 for r in results if isinstance(r, BaseException))

    async def entry(self, server: Server, workspace: str, definition: Definition) -> Entry:
        """The definition's pin state; a changed definition is reported (audited) once."""
        pin = self.pins.get(server.tenant, server.pin_workspace(workspace), server.name, definition.name)
        if pin is None:
            return Entry(server, definition, "unpinned", None)
        if pin.digest == definition.digest:
            return Entry(server, definition, "pinned", pin)
        key = (server.tenant, pin.workspace, server.name, definition.name, definition.digest)
        if key not in self._reported:
            self._reported.add(key)
            await self.publish(subjects.mcp_event("definition", server.tenant), McpDefinitionChanged(
                tenant=server.tenant, server=server.name, tool=definition.name, workspace=pin.workspace,
                pinned_digest=pin.digest, served_digest=definition.digest,
                diff=definition_diff(pin.definition, definition.as_dict())))
        return Entry(server, definition, "changed", pin)

    async def tools_for(self, grant: SessionGrant, signed: SignedGrant | None = None) -> McpToolsAnswer:
        """The tools a planner of this grant may list: not withheld (changed definitions), and only those the
        policy could ever allow for this person (`may_use` answers which names; None lists every one)."""
        may_use = self.may_use
        entries, problems = await self.catalog(grant.tenant, grant.workspace)
        if may_use is not None:
            allowed = await may_use(signed, [e.name for e in entries]) if signed is not None else set()
            entries = [e for e in entries if e.name in allowed]
        visible = [e for e in entries if e.state != "changed"]
        return McpToolsAnswer(tools=tuple(McpToolView(name=e.name, description=e.definition.description,
                                                       input_schema=e.definition.input_schema,
                                                       pinned=e.state == "pinned") for e in visible),
                              problems=tuple(problems),
                              withheld=tuple(e.name for e in entries if e.state == "changed"))

    async def facts(self, query: McpFactsQuery) -> McpToolFacts:
        """What policy decides on: the server, the tool, its annotations and whether its definition is pinned."""
        found = await self.find(query.tenant, query.workspace, query.tool)
        if isinstance(found, str):
            return McpToolFacts(pin="unknown")
        return McpToolFacts(server=found.server.name, tool=found.definition.name, pin=found.state,
                            annotations=found.definition.annotations, approvers=found.server.approvers,
                            digest=found.definition.digest, definition=found.definition.as_dict())

    async def find(self, tenant: str, workspace: str, name: str) -> Entry | str:
        """The entry of one governed tool name, or why there is none."""
        split = split_tool_name(name)
        if split is None:
            return f"{name!r} is not an MCP tool name (mcp__<server>__<tool>)"
        self.registry.refresh()
        server = self.registry.registry.server(tenant, split[0])
        if server is None or not server.serves(workspace):
            return f"no MCP server {split[0]!r} is registered for {tenant}/{workspace}"
        try:
            await self.check_egress(server, workspace)
            definitions = await self.definitions(server, workspace)
        except (UpstreamError, TimeoutError) as exc:
            return f"MCP server {server.name} is unavailable: {exc or 'timed out'}"
        definition = next((d for d in definitions if d.name == split[1]), None)
        if definition is None:
            return f"MCP server {server.name} serves no tool {split[1]!r}"
        return await self.entry(server, workspace, definition)

    # --- the governed call --------------------------------------------------

    def verify(self, event: ToolCallDispatched, now: datetime | None = None) -> tuple[Decision, str]:
        """The decision and its issuer, if it allows exactly this call now; CallRefused otherwise."""
        try:
            decision = event.decision.verify(self.keyring)
        except SignatureError as exc:
            raise CallRefused(f"decision signature rejected: {exc}") from None
        issuer = (self.keyring.keys.get(event.decision.key_id) or ("?",))[0]
        if decision.verdict != "allow":
            raise CallRefused(f"the decision is {decision.verdict!r}, not allow")
        if (decision.tenant, decision.workspace) != (event.tenant, event.workspace):
            raise CallRefused("the decision is for another tenant or workspace")
        if decision.call_id != event.call_id or decision.tool != event.tool or decision.session_id != event.session_id:
            raise CallRefused("the decision names another call")
        try:
            digest = call_digest(tenant=event.tenant, workspace=event.workspace, session=event.session_id,
                                 tool=event.tool, args=event.args)
        except CanonicalizationError as exc:
            raise CallRefused(f"the arguments cannot be digested: {exc}") from None
        if digest != decision.digest:
            raise CallRefused("the arguments differ from the ones decided (digest mismatch)")
        if (now or datetime.now(UTC)) >= decision.expires_at:
            raise CallRefused(f"the decision expired at {decision.expires_at.isoformat()}")
        return decision, issuer

    def claim(self, decision: Decision) -> None:
        """Use the decision up (in the shared pins database, so no replica runs it twice)."""
        try:
            with self.pins.engine.begin() as db:
                db.execute(USED.insert().values(decision_id=decision.decision_id, call_id=decision.call_id,
                                                used_at=datetime.now(UTC)))
        except IntegrityError:
            raise CallRefused(f"decision {decision.decision_id} was already used (replay)") from None

    async def take(self, event: ToolCallDispatched, decision: Decision) -> None:
        """Take the call in the bus's ledger, as an executor does: refused when it ran before, or when its
        requester stopped waiting for a decision and closed it (it was told the call was denied)."""
        if self.calls is None:
            raise CallRefused("the MCP gateway is not connected to the ledger of calls; nothing ran")
        try:
            taken = await self.calls.take(event.tenant, event.workspace, event.call_id, decision.decision_id)
        except ClaimUnknown as exc:
            raise CallRefused(f"the call cannot be taken ({exc}); nothing ran") from None
        if not taken:
            raise CallRefused(f"call {event.call_id} was already taken: it ran under another decision, or its "
                              "requester stopped waiting for a decision and was told it was denied")

    async def call(self, event: ToolCallDispatched) -> ToolCallCompleted:
        """Run one dispatched call upstream, governed; always returns the outcome (never raises)."""
        try:
            return await self._call(event)
        except CallRefused as exc:
            return ToolCallCompleted.of(event, "denied", reason=str(exc), executed_by=EXECUTED_BY)
        except Exception as exc:  # a bug must still answer the planner, as an error, never run anything
            log.exception("MCP call %s failed", event.call_id)
            return ToolCallCompleted.of(event, "error", reason=f"MCP gateway error: {type(exc).__name__}",
                                        executed_by=EXECUTED_BY)

    async def _call(self, event: ToolCallDispatched) -> ToolCallCompleted:
        decision, issuer = self.verify(event)
        split = split_tool_name(event.tool)
        if split is None:
            raise CallRefused(f"{event.tool!r} is not an MCP tool")
        self.registry.refresh()
        server = self.registry.registry.server(event.tenant, split[0])
        if server is None or not server.serves(event.workspace):
            raise CallRefused(f"no MCP server {split[0]!r} is registered for {event.tenant}/{event.workspace}")
        self.claim(decision)
        await self.take(event, decision)
        self._asked[(server.tenant, server.name)] = time.monotonic()
        timeout_s = server.timeout_s or self.call_timeout_s
        try:
            started = time.monotonic()
            async with self.sessions.session(self.upstream(server, event.workspace)) as client:
                definitions = await self.served(server, client)
                self._remember(server, definitions, started)
                definition = next((d for d in definitions if d.name == split[1]), None)
                if definition is None:
                    raise CallRefused(f"MCP server {server.name} serves no tool {split[1]!r}")
                entry = await self.entry(server, event.workspace, definition)
                await self._check_pin(entry, decision, issuer)
                result = await call(client, definition.name, event.args, timeout_s)
        except UpstreamError as exc:  # its text may come from the upstream: it is scrubbed like a result
            return ToolCallCompleted.of(event, "error", reason=scrub(f"MCP server {server.name}: {exc}",
                                                                     self.credentials(server)),
                                        executed_by=EXECUTED_BY)
        return self._outcome(event, server, definition, result)

    async def _check_pin(self, entry: Entry, decision: Decision, issuer: str) -> None:
        if entry.state == "pinned":
            return
        if entry.state == "changed":
            raise CallRefused(f"the definition of {entry.name} changed since it was approved (pinned "
                              f"{entry.pin.digest[:12] if entry.pin else '?'}, served {entry.definition.digest[:12]}); "
                              "withheld until someone approves the new definition")
        # Unpinned: only a person's approval of exactly this definition may pin it.
        shown = {f.value for f in decision.facts if f.name == DEFINITION_FACT}
        if issuer != "approval" or entry.definition.digest not in shown:
            raise CallRefused(f"{entry.name} has not been approved for first use (its definition is not pinned)")
        approver = decision.reason.split(" by ", 1)[-1][:256] if " by " in decision.reason else "approval"
        pin = self.pins.pin(entry.server.tenant, entry.server.pin_workspace(decision.workspace), entry.server.name,
                            entry.definition.name, entry.definition.digest, entry.definition.as_dict(), approver)
        # A definition approved again: a later change of it is news again (and audited again).
        self._reported = {k for k in self._reported if k[:4] != (pin.tenant, pin.workspace, pin.server, pin.tool)}
        await self.publish(subjects.mcp_event("pin", pin.tenant), McpPinChanged(
            tenant=pin.tenant, action="pinned", actor=approver, server=pin.server, tool=pin.tool,
            workspace=pin.workspace, digest=pin.digest))

    def _outcome(self, event: ToolCallDispatched, server: Server, definition: Definition, result: Any) -> ToolCallCompleted:
        secrets = self.credentials(server)
        text = result_text(result)
        if definition.output_schema and not result.is_error:
            problem = schema_problem(definition.output_schema, result.structured_content)
            if problem is not None:
                return ToolCallCompleted.of(event, "error", reason=f"MCP server {server.name} returned a result "
                                            f"that does not match the tool's output schema: {problem}",
                                            executed_by=EXECUTED_BY)
        text = scrub(text, secrets)
        limit = min(server.max_result_bytes or self.max_result_bytes, self.max_result_bytes)
        encoded = text.encode()
        if len(encoded) > limit:
            text = encoded[:limit].decode(errors="ignore") + f"\n[result cut to {limit} bytes by the MCP gateway]"
        status = "error" if result.is_error else "ok"
        return ToolCallCompleted.of(event, status, result=text,
                                    reason=f"MCP server {server.name} reported an error" if result.is_error else "",
                                    executed_by=EXECUTED_BY)


def registry_changes(before: Registry, after: Registry) -> list[McpServerChanged]:
    """One event per server added, changed or removed between two registries (credential names, never values)."""
    events = []
    keys = {(t, n) for t, named in before.servers.items() for n in named} | \
           {(t, n) for t, named in after.servers.items() for n in named}
    for tenant, name in sorted(keys):
        old, new = before.server(tenant, name), after.server(tenant, name)
        if old == new:
            continue
        server = new or old
        assert server is not None
        action = "added" if old is None else "removed" if new is None else "changed"
        events.append(McpServerChanged(tenant=tenant, action=action, actor="mcp.yaml", server=name,
                                       scope=server.scope, transport=server.transport, target=server.target[:2000],
                                       credentials=server.credentials.secret_names()))
    return events


def result_text(result: Any) -> str:
    """The result as the agent reads it: the content blocks' text, else the structured content as JSON."""
    parts = []
    for block in result.content:
        text = getattr(block, "text", None)
        parts.append(text if text is not None else f"[{getattr(block, 'type', 'content')} omitted]")
    if not parts and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False, sort_keys=True)
    return "\n".join(parts)


def schema_problem(schema: dict[str, Any], value: Any) -> str | None:
    if value is None:
        return "no structured content"
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as exc:
        return exc.message[:300]
    except jsonschema.SchemaError as exc:
        return f"the tool's output schema is invalid: {exc.message[:200]}"
    return None


def scrub(text: str, secrets: list[str]) -> str:
    """Upstream credentials by value and in their encoded forms (definitions.credential_forms), then every
    secret-looking pattern (libs/redaction)."""
    return redact_text(hide_credentials(text, secrets))
