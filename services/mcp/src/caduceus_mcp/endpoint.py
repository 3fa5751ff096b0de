"""The MCP endpoint for other MCP clients (IDE agents, other agent runtimes): a tenant's governed tools served
over MCP streamable HTTP at `/mcp/<tenant>[/<workspace>]`, as an OAuth 2.1 protected resource.

Who is calling: every HTTP request carries `Authorization: Bearer <access token>`. Identity verifies the token
(audience-bound: a token for the chat audience, another tenant or expired is refused) and answers with the
person's signed session grant (`caduceus.identity.grant.<tenant>`); a request without a usable token gets 401 with
`WWW-Authenticate: Bearer resource_metadata=...` pointing at the RFC 9728 metadata, which names the tenant's
OIDC issuer.

What they may do: tools/list is the gateway's own filtered list for that person (`tools_for(grant)`, the same list
a planner gets). tools/call is a tool call like the agent's: a `tool.requested` event with the grant, decided by
policy, waiting for approval when policy says so, dispatched by the broker to the gateway, which verifies the
decision and calls the upstream; the outcome is the `tool.completed` event. Nothing here calls an upstream.

A call waiting for approval is answered after `approval_wait_s` with a "waiting for approval" error result; the
same call (same person, tool and arguments) asked again attaches to the waiting one instead of asking again, and
gets its outcome once approvers have answered.

Stateless streamable HTTP: every request is authenticated on its own and no MCP session outlives it, so a
session id can never carry one person's rights to another request. Both eras of the protocol are served: the
initialize handshake (up to 2025-11-25, which Hermes 0.19's MCP client speaks) and the per-request envelope
(2026-07-28).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import mcp_types as types
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as HttpRoute
from starlette.types import Receive, Scope, Send

from caduceus_bus import CallClaims, ClaimUnknown, EventConnection, RouteTable
from caduceus_contracts import (
    CanonicalizationError,
    ContractError,
    GrantAnswer,
    GrantExpired,
    GrantRequested,
    Keyring,
    McpToolsAnswer,
    SessionGrant,
    SignatureError,
    SignedGrant,
    ToolCallCompleted,
    ToolCallDecided,
    ToolCallRequested,
    call_digest,
    canonical_json,
    new_id,
    parse_event,
    subjects,
    utcnow,
)
from caduceus_mcp.shared_calls import KV_WAIT_S, SharedCall, SharedCalls, action_key
from caduceus_web import HttpServer

log = logging.getLogger(__name__)

PATH_PREFIX = "/mcp"
METADATA_PREFIX = "/.well-known/oauth-protected-resource"
GRANT_SCOPE_KEY = "caduceus.grant"
MCP_TOOL_PREFIX = "mcp__"

# What the endpoint adds to the gateway's bus role: it asks identity for grants, requests tool calls like a
# planner, and follows their decisions and outcomes.
ENDPOINT_ROUTES = RouteTable(
    role="mcp",
    routes=(),
    publishes=(subjects.IDENTITY_GRANT_ALL, subjects.TOOL_REQUESTED_ALL),
    extra_subscribes=(subjects.TOOL_DECIDED_ALL, subjects.TOOL_COMPLETED_ALL),
)


class AccessRefused(Exception):
    """A request the endpoint will not serve: `status` 401 (the token), 403/404 (the path) or 503 (identity down)."""

    def __init__(self, status: int, reason: str, remedy: str = "") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.remedy = remedy


# --- who is calling ---------------------------------------------------------------------------------------------


GrantAsker = Callable[[GrantRequested], Awaitable[GrantAnswer]]


class GrantDesk:
    """Turns a bearer token into the person's signed session grant (asking identity), cached until it expires.

    The cache is keyed by a hash of the token with the tenant and workspace, so a token never lives in memory
    longer than its request, and a grant is never reused for another path.
    """

    def __init__(self, ask: GrantAsker, keyring: Keyring, *, max_entries: int = 10_000,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.ask = ask
        self.keyring = keyring
        self.clock = clock
        self.max_entries = max_entries
        self._cache: OrderedDict[str, tuple[SignedGrant, SessionGrant]] = OrderedDict()

    async def grant(self, tenant: str, workspace: str, token: str) -> tuple[SignedGrant, SessionGrant]:
        key = hashlib.sha256(f"{tenant}\0{workspace}\0{token}".encode()).hexdigest()
        cached = self._cache.get(key)
        now = self.clock()
        if cached is not None and cached[1].expires_at > now:
            self._cache.move_to_end(key)
            return cached
        self._cache.pop(key, None)
        # One MCP "session" per token: the same call asked again with the same token has the same digest.
        session = f"mcp-{key[:40]}"
        answer = await self.ask(GrantRequested(tenant=tenant, workspace=workspace, session_id=session, token=token))
        if answer.grant is None:
            if answer.unavailable:
                raise AccessRefused(503, answer.refused, answer.remedy)
            raise AccessRefused(401, answer.refused or "identity refused the token", answer.remedy)
        try:
            grant = answer.grant.verify(self.keyring, issuers={"identity"}, now=now)
        except (SignatureError, GrantExpired) as exc:
            raise AccessRefused(401, f"the grant identity answered does not verify: {exc}") from None
        if (grant.tenant, grant.workspace) != (tenant, workspace):
            raise AccessRefused(401, f"identity granted {grant.tenant}/{grant.workspace}, not {tenant}/{workspace}")
        self._cache[key] = (answer.grant, grant)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return answer.grant, grant


def ask_identity(connection: EventConnection, timeout_s: float = 5.0) -> GrantAsker:
    """A GrantAsker over the bus: a core NATS request to identity (never stored: it carries the token)."""
    async def ask(request: GrantRequested) -> GrantAnswer:
        try:
            reply = await connection.nc.request(subjects.identity_grant(request.tenant),
                                                request.model_dump_json().encode(), timeout=timeout_s)
        except (TimeoutError, NatsTimeout, NoRespondersError):
            return GrantAnswer(refused="identity did not answer", unavailable=True,
                               remedy="try again shortly; if this persists, tell an operator that identity is down")
        return GrantAnswer.model_validate_json(reply.data)
    return ask


# --- governed calls --------------------------------------------------------------------------------------------


@dataclass
class CallOutcome:
    """What a client gets for one call: a result, a refusal, or "still waiting for approval"."""

    status: str  # ok | error | denied | refused | waiting
    text: str

    @property
    def is_error(self) -> bool:
        return self.status != "ok"


# How long a call waiting for approval is remembered for a client that calls again.
KEEP_S = 3600.0
# On stop, the calls still waiting are answered "call again" this long before the drain would cut them.
WIND_DOWN_BEFORE_CUT_S = 1.5


class _Stopping(Exception):
    """The endpoint winds down (GovernedCalls.wind_down)."""


@dataclass
class PendingCall:
    request: ToolCallRequested
    decided: asyncio.Event = field(default_factory=asyncio.Event)
    verdict: str = ""
    reason: str = ""
    completed: asyncio.Future[ToolCallCompleted] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    asked_at: float = field(default_factory=time.monotonic)
    asked_epoch: float = field(default_factory=time.time)  # when it was asked, at whichever replica
    mine: bool = True  # requested by this replica (False: taken up from another one, see shared_calls.py)


class GovernedCalls:
    """Requests tool calls on the bus as a planner does and waits for their outcome.

    `publish` sends a ToolCallRequested; `on_event` must receive every `tool.decided` and `tool.completed` event.
    """

    def __init__(self, publish: Callable[[str, ToolCallRequested], Awaitable[None]],
                 close: Callable[[ToolCallRequested], Awaitable[bool | None]], *,
                 decision_timeout_s: float = 10.0, approval_wait_s: float = 25.0, call_timeout_s: float = 45.0,
                 keep_s: float = KEEP_S, shared: SharedCalls | None = None) -> None:
        self.publish = publish
        # The calls in progress of every replica (shared_calls.py); None: this replica's own only.
        self.shared = shared
        # Closes a call it stops waiting for (True: nothing can run it now; False: the gateway took it first;
        # None: the ledger did not answer). See caduceus_bus.claims.
        self.close = close
        self.decision_timeout_s = decision_timeout_s
        self.approval_wait_s = approval_wait_s
        self.call_timeout_s = call_timeout_s
        self.keep_s = keep_s
        self._by_call: dict[str, PendingCall] = {}
        self._by_action: dict[tuple, PendingCall] = {}
        self._stopping = asyncio.Event()

    def wind_down(self) -> None:
        """The endpoint is stopping: every call still waiting is answered now, "call again" (the call goes on, and
        another replica, or this one restarted, takes it up), rather than cut with an HTTP error."""
        self._stopping.set()

    async def _until(self, waited: Awaitable[Any], timeout_s: float) -> Any:
        """`waited` within `timeout_s` (TimeoutError), or _Stopping once the endpoint winds down."""
        stop = asyncio.ensure_future(self._stopping.wait())
        task = asyncio.ensure_future(waited)
        try:
            done, _ = await asyncio.wait({task, stop}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task in done:
            return task.result()
        task.cancel()
        raise _Stopping() if stop in done else TimeoutError()

    def on_event(self, event: ToolCallDecided | ToolCallCompleted) -> None:
        pending = self._by_call.get(event.call_id)
        if pending is None or event.tenant != pending.request.tenant or \
                event.workspace != pending.request.workspace:
            return
        if isinstance(event, ToolCallDecided):
            decision = event.decision.decision
            if decision.digest == pending.request.digest:
                pending.verdict, pending.reason = decision.verdict, decision.reason
                pending.decided.set()
        elif isinstance(event, ToolCallCompleted) and not pending.completed.done():
            pending.completed.set_result(event)
            pending.decided.set()

    async def call(self, signed: SignedGrant, grant: SessionGrant, tool: str, args: dict[str, Any]) -> CallOutcome:
        try:
            return await self._call(signed, grant, tool, args)
        except _Stopping:
            return CallOutcome("waiting", "this MCP endpoint is restarting and nothing was lost: the call goes on. "
                                          "Call the tool again with the same arguments to get its outcome.")

    async def _call(self, signed: SignedGrant, grant: SessionGrant, tool: str, args: dict[str, Any]) -> CallOutcome:
        if not tool.startswith(MCP_TOOL_PREFIX):
            # Only the gateway's tools: the endpoint is no way to the workspace's native tools (shell, files).
            return CallOutcome("refused", f"{tool[:200]!r} is not one of this endpoint's tools (they are named "
                                          f"{MCP_TOOL_PREFIX}<server>__<tool>; tools/list shows yours)")
        self._expire()
        try:
            action = (grant.tenant, grant.workspace, grant.user, tool, canonical_json(args))
            request = ToolCallRequested(
                tenant=grant.tenant, call_id=new_id(), grant=signed, workspace=grant.workspace,
                session_id=grant.session_id, tool=tool, args=args,
                digest=call_digest(tenant=grant.tenant, workspace=grant.workspace, session=grant.session_id,
                                   tool=tool, args=args))
        except (CanonicalizationError, ValueError) as exc:
            return CallOutcome("refused", f"the arguments cannot be governed: {str(exc)[:300]}")
        pending, new = await self._pending_for(action, request)
        mine = pending.mine
        if new:
            await self.publish(subjects.tool_requested(grant.tenant), request)
        if (new or not mine) and not pending.decided.is_set():
            try:
                await self._until(pending.decided.wait(), self.decision_timeout_s)
            except TimeoutError:
                # Taken up from another replica, which closes it at its own bound; past twice that, that replica is
                # gone (stopped, killed) and this one closes it.
                if not mine and time.time() - pending.asked_epoch < 2 * self.decision_timeout_s:
                    return CallOutcome("error", "no decision yet for this call (asked at another replica of the "
                                                "endpoint); call the tool again with the same arguments to wait on")
                closed = await self.close(pending.request)
                if closed is not False:  # else the gateway took the call just as the bound passed: its result
                    await self._forget(action)
                    bound = f"policy did not decide within {self.decision_timeout_s:g} s"
                    if closed:
                        return CallOutcome("denied", f"{bound}, so nothing ran; try again, and tell an operator "
                                                     "if this persists")
                    return CallOutcome("error", f"{bound}, and the call could not be closed (the ledger of used "
                                                "decisions did not answer): it should not run, but that cannot "
                                                "be confirmed")
        waiting = pending.verdict == "approve" and not pending.completed.done()
        try:
            completed = await self._until(asyncio.shield(pending.completed),
                                          self.approval_wait_s if waiting else self.call_timeout_s)
        except TimeoutError:
            if waiting:
                return CallOutcome("waiting", f"waiting for approval: {pending.reason or 'policy asks a person'}; "
                                              "nothing has run yet. Call the tool again with the same arguments "
                                              "to wait for the approvers' answer and get the result.")
            if not mine and time.time() - pending.asked_epoch < 2 * (self.decision_timeout_s + self.call_timeout_s):
                return CallOutcome("error", f"no outcome yet within {self.call_timeout_s:g} s (the call was asked "
                                            "at another replica of the endpoint); call the tool again with the "
                                            "same arguments to wait on")
            await self._forget(action)
            closed = await self.close(pending.request)
            bound = f"no outcome within {self.call_timeout_s:g} s"
            if closed:
                return CallOutcome("error", f"{bound}; the gateway never took the call, and now it never will")
            if closed is False:
                return CallOutcome("error", f"{bound}; the gateway took the call up, so it may have run")
            return CallOutcome("error", f"{bound}; the call may not have run")
        await self._forget(action)
        if completed.status == "ok":
            return CallOutcome("ok", completed.result)
        # An upstream's error result says what went wrong (redacted and cut by the gateway): the client reads it.
        detail = ": ".join(part for part in (completed.reason, completed.result) if part)
        return CallOutcome(completed.status, f"{completed.status}: {detail}")

    async def _pending_for(self, action: tuple, request: ToolCallRequested) -> tuple[PendingCall, bool]:
        """The call in progress for this action (held here, or taken up from another replica), or a new one;
        True when it is new: this replica requests it and answers for it."""
        pending = self._by_action.get(action)
        if pending is not None and await self._still_shared(action, pending):
            return pending, False
        if pending is not None:  # answered at another replica meanwhile: a new call
            self._drop(action)
        pending = PendingCall(request)
        found = await self._share(action, pending)
        if found is not None and found.call_id != request.call_id:
            pending = PendingCall(request.model_copy(update={"call_id": found.call_id, "digest": found.digest}),
                                  mine=False, asked_epoch=found.asked_at)
        self._by_call[pending.request.call_id] = pending
        self._by_action[action] = pending
        if not pending.mine and self.shared is not None:
            try:
                for event in await self.shared.so_far(request.tenant, request.workspace, found):
                    self.on_event(event)
            except Exception as exc:  # it still hears what comes from now on
                log.warning("could not read back call %s (%s: %s)", found.call_id, type(exc).__name__, exc)
            log.info("took up call %s, asked at another replica of the endpoint", found.call_id)
        return pending, pending.mine

    async def _share(self, action: tuple, pending: PendingCall) -> SharedCall | None:
        if self.shared is None:
            return None
        own = SharedCall(pending.request.call_id, pending.request.digest, time.time())
        try:
            return await asyncio.wait_for(self.shared.take(action_key(*action), own), KV_WAIT_S)
        except Exception as exc:  # on its own, as one replica would: the worst is asking the approvers again
            log.warning("calls in progress not shared (%s: %s); asking on our own", type(exc).__name__, exc)
            return None

    async def _still_shared(self, action: tuple, pending: PendingCall) -> bool:
        """False when the call this replica holds was answered at another replica (its record released)."""
        if self.shared is None:
            return True
        try:
            holder = await asyncio.wait_for(self.shared.holder(action_key(*action)), KV_WAIT_S)
        except Exception:
            return True
        return holder == pending.request.call_id

    async def _forget(self, action: tuple) -> None:
        pending = self._drop(action)
        if pending is not None and self.shared is not None:
            try:
                await asyncio.wait_for(self.shared.release(action_key(*action), pending.request.call_id), KV_WAIT_S)
            except Exception as exc:  # it expires with the bucket's TTL
                log.warning("could not release call %s (%s: %s)", pending.request.call_id, type(exc).__name__, exc)

    def _drop(self, action: tuple) -> PendingCall | None:
        pending = self._by_action.pop(action, None)
        if pending is not None:
            self._by_call.pop(pending.request.call_id, None)
        return pending

    def _expire(self) -> None:
        now = time.monotonic()
        for action, pending in list(self._by_action.items()):
            if now - pending.asked_at > self.keep_s:
                self._drop(action)


# --- the MCP server and the HTTP resource -----------------------------------------------------------------------


# The gateway's `tools_for(grant, signed)`: what this person may be offered (policy says which they could use).
ToolLister = Callable[[SessionGrant, SignedGrant], Awaitable[McpToolsAnswer]]


@dataclass
class EndpointConfig:
    """Where the endpoint is reached (`public_url`, the base of every resource URL) and who issues its tokens."""

    public_url: str
    issuer_for: Callable[[str], str | None]  # tenant -> its OIDC issuer (None: no such tenant)


def _grant_of(ctx: Any) -> tuple[SignedGrant, SessionGrant]:
    request = getattr(ctx, "request", None)
    scope = getattr(request, "scope", None) or {}
    found = scope.get(GRANT_SCOPE_KEY)
    if found is None:  # the HTTP layer admits no request without one; refuse rather than guess
        raise PermissionError("this request carries no verified grant")
    return found


def mcp_server(list_tools: ToolLister, calls: GovernedCalls) -> Server:
    """The MCP server: tools/list and tools/call for the person whose grant the HTTP layer attached."""

    async def on_list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        signed, grant = _grant_of(ctx)
        answer = await list_tools(grant, signed)
        for problem in answer.problems:
            log.warning("tool list for %s@%s/%s: %s", grant.user, grant.tenant, grant.workspace, problem)
        return types.ListToolsResult(tools=[
            types.Tool(name=tool.name, description=tool.description or None,
                       input_schema=tool.input_schema or {"type": "object"})
            for tool in answer.tools])

    async def on_call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        signed, grant = _grant_of(ctx)
        outcome = await calls.call(signed, grant, params.name, dict(params.arguments or {}))
        return types.CallToolResult(content=[types.TextContent(type="text", text=outcome.text)],
                                    is_error=outcome.is_error,
                                    meta={"caduceus/status": outcome.status})

    return Server("caduceus-mcp", version="1", on_list_tools=on_list_tools, on_call_tool=on_call_tool)


def _split(path: str) -> tuple[str, str] | None:
    """(tenant, workspace) of `/mcp/<tenant>[/<workspace>]`, or None."""
    parts = [p for p in path.split("/") if p]
    if len(parts) not in (2, 3) or parts[0] != PATH_PREFIX.strip("/"):
        return None
    tenant, workspace = parts[1], parts[2] if len(parts) == 3 else "default"
    if not (subjects.TOKEN_RE.match(tenant) and subjects.TOKEN_RE.match(workspace)):
        return None
    return tenant, workspace


class McpEndpoint:
    """The ASGI app: RFC 9728 metadata, the bearer check, then the SDK's streamable HTTP transport."""

    def __init__(self, config: EndpointConfig, desk: GrantDesk, server: Server,
                 calls: GovernedCalls | None = None) -> None:
        self.config = config
        self.desk = desk
        self.server = server
        self.calls = calls  # answered "call again" just before the drain ends (GovernedCalls.wind_down)
        base = config.public_url.rstrip("/")
        netloc = base.split("://", 1)[-1].split("/", 1)[0]
        self.manager = StreamableHTTPSessionManager(
            app=server, stateless=True, json_response=True,
            security_settings=TransportSecuritySettings(
                enable_dns_rebinding_protection=True,
                allowed_hosts=[netloc, "127.0.0.1:*", "localhost:*", "[::1]:*"],
                allowed_origins=[base, "http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]))
        self.base = base
        self.routes = Starlette(routes=[
            HttpRoute(METADATA_PREFIX + PATH_PREFIX + "/{rest:path}", self.metadata, methods=["GET"]),
        ], lifespan=self.lifespan)

    def resource(self, tenant: str, workspace: str, named_workspace: bool) -> str:
        return f"{self.base}{PATH_PREFIX}/{tenant}" + (f"/{workspace}" if named_workspace else "")

    def metadata_url(self, resource_path: str) -> str:
        return f"{self.base}{METADATA_PREFIX}{resource_path}"

    @contextlib.asynccontextmanager
    async def lifespan(self, _: Starlette) -> AsyncIterator[None]:
        async with self.manager.run():
            yield

    async def start(self, host: str, port: int, *, shared: bool = False, drain_s: float = 2.0) -> None:
        """Serve on host:port in the running loop (HttpUnavailable when the port is taken) until stop(), which
        gives the requests in progress `drain_s` to finish."""
        ready, self._stopping = asyncio.Event(), asyncio.Event()

        async def run_manager() -> None:
            async with self.manager.run():
                ready.set()
                await self._stopping.wait()

        self._manager_task = asyncio.create_task(run_manager(), name="mcp-endpoint-sessions")
        await ready.wait()
        self.http = HttpServer(self, host, port, what="the MCP endpoint", port_setting="CADUCEUS_ENDPOINT_PORT",
                               shared=shared, grace_s=drain_s)
        await self.http.start()
        log.info("MCP endpoint for other clients at %s%s/<tenant>[/<workspace>]", self.base, PATH_PREFIX)

    async def stop(self) -> None:
        if getattr(self, "http", None) is not None:
            winding = None
            if self.calls is not None:
                winding = asyncio.get_running_loop().call_later(
                    max(0.0, self.http.grace_s - WIND_DOWN_BEFORE_CUT_S), self.calls.wind_down)
            await self.http.stop()
            if winding is not None:
                winding.cancel()
        if getattr(self, "_manager_task", None) is not None:
            self._stopping.set()
            await self._manager_task

    async def metadata(self, request: Request) -> Response:
        found = _split(PATH_PREFIX + "/" + request.path_params["rest"])
        if found is None or self.config.issuer_for(found[0]) is None:
            return JSONResponse({"error": "not_found", "error_description": "no such MCP resource"}, 404)
        tenant, workspace = found
        named = request.path_params["rest"].strip("/").count("/") == 1
        issuer = self.config.issuer_for(tenant)
        return JSONResponse({
            "resource": self.resource(tenant, workspace, named),
            "authorization_servers": [issuer],
            "bearer_methods_supported": ["header"],
            "resource_name": f"Caduceus MCP gateway: {tenant}" + (f"/{workspace}" if named else ""),
            "resource_documentation": "https://github.com/caduceus/caduceus#the-mcp-endpoint-for-other-clients",
        }, headers={"Cache-Control": "no-store"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PATH_PREFIX + "/"):
            await self.routes(scope, receive, send)
            return
        found = _split(scope["path"])
        if found is None or self.config.issuer_for(found[0]) is None:
            await JSONResponse({"error": "not_found", "error_description": "no such MCP resource: use "
                                f"{PATH_PREFIX}/<tenant>[/<workspace>]"}, 404)(scope, receive, send)
            return
        tenant, workspace = found
        resource_path = scope["path"].rstrip("/")
        token = _bearer(scope)
        try:
            if token is None:
                raise AccessRefused(401, "")
            signed, grant = await self.desk.grant(tenant, workspace, token)
        except AccessRefused as refused:
            await self._refuse(refused, resource_path, scope, receive, send)
            return
        except ContractError as exc:
            await self._refuse(AccessRefused(401, str(exc)), resource_path, scope, receive, send)
            return
        scope[GRANT_SCOPE_KEY] = (signed, grant)
        await self.manager.handle_request(scope, receive, send)

    async def _refuse(self, refused: AccessRefused, resource_path: str, scope: Scope, receive: Receive,
                      send: Send) -> None:
        metadata = self.metadata_url(resource_path)
        if refused.status == 503:
            response = JSONResponse({"error": "temporarily_unavailable", "error_description": refused.reason},
                                    503, headers={"Retry-After": "5"})
        elif not refused.reason:
            # RFC 6750 §3.1: no credentials, no error code; say where to learn how to get one.
            response = JSONResponse({"error": "unauthorized", "error_description": "send an OAuth access token: "
                                     f"Authorization: Bearer <token> (how to get one: {metadata})"}, 401,
                                    headers={"WWW-Authenticate": f'Bearer resource_metadata="{metadata}"'})
        else:
            text = refused.reason + (f"; {refused.remedy}" if refused.remedy else "")
            quoted = "".join(c for c in text if " " <= c <= "~" and c not in '"\\')[:500]
            response = JSONResponse(
                {"error": "invalid_token", "error_description": text}, refused.status,
                headers={"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{quoted}", '
                                             f'resource_metadata="{metadata}"'})
        await response(scope, receive, send)


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


# --- wiring on the bus ------------------------------------------------------------------------------------------


async def follow_calls(connection: EventConnection, calls: GovernedCalls) -> list:
    """Subscribe `calls` to every decision and outcome (core NATS: the endpoint only waits for its own calls)."""
    async def on_msg(msg: Msg) -> None:
        try:
            event = parse_event(msg.data, subject=msg.subject)
        except ContractError:
            return  # policy, the broker or the audit trail report malformed events; the call times out here
        if isinstance(event, ToolCallDecided | ToolCallCompleted):
            calls.on_event(event)

    return [await connection.subscribe(subjects.TOOL_DECIDED_ALL, on_msg),
            await connection.subscribe(subjects.TOOL_COMPLETED_ALL, on_msg)]


def closer(claims: CallClaims) -> Callable[[ToolCallRequested], Awaitable[bool | None]]:
    """GovernedCalls' `close`: the call closed in the bus's ledger (None when the ledger does not answer)."""
    async def close(request: ToolCallRequested) -> bool | None:
        try:
            return await claims.close(request.tenant, request.workspace, request.call_id)
        except ClaimUnknown as exc:
            log.warning("could not close call %s: %s", request.call_id, exc)
            return None

    return close


def issuer_lookup(directory: Callable[[], Any], deployment_issuer: str | None) -> Callable[[str], str | None]:
    """A tenant's OIDC issuer from the tenants file: its own (`issuers:`), else the deployment's; None: no such
    tenant."""
    def issuer_for(name: str) -> str | None:
        found = directory().tenants.get(name)
        if found is None:
            return None
        if found.issuers:
            return found.issuers[0].url.rstrip("/")
        return deployment_issuer

    return issuer_for


async def start_endpoint(connection: EventConnection, keyring: Keyring, list_tools: ToolLister, *, host: str,
                         port: int, public_url: str, issuer_for: Callable[[str], str | None],
                         decision_timeout_s: float, approval_wait_s: float, call_timeout_s: float,
                         shared: bool = False, drain_s: float = 2.0) -> McpEndpoint:
    """The endpoint of a running gateway: grants from identity and calls on `connection`, served on host:port."""
    try:
        shared = await SharedCalls.open(connection, keep_s=KEEP_S, replicas=connection.settings.stream_replicas)
    except Exception as exc:  # each replica then knows its own calls only: a call asked again elsewhere is new
        log.warning("the MCP endpoint's calls in progress cannot be shared with other replicas (%s: %s)",
                    type(exc).__name__, exc)
        shared = None
    calls = GovernedCalls(connection.publish, closer(CallClaims(connection.js)),
                          decision_timeout_s=decision_timeout_s, approval_wait_s=approval_wait_s,
                          call_timeout_s=call_timeout_s, keep_s=KEEP_S, shared=shared)
    await follow_calls(connection, calls)
    endpoint = McpEndpoint(EndpointConfig(public_url, issuer_for), GrantDesk(ask_identity(connection), keyring),
                           mcp_server(list_tools, calls), calls)
    await endpoint.start(host, port, shared=shared, drain_s=drain_s)
    return endpoint
