"""Talking to one upstream MCP server with the official SDK: list its tools, call one, within a bound.

The gateway is the only process that connects upstream. A stdio server is started per session (inside
bubblewrap when a launcher is given: see sandbox.py), an HTTP server is reached by its URL; credentials are
resolved from the secret store here, at connect time, and never leave this module except to the upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from caduceus_mcp.definitions import Definition
from caduceus_mcp.egress import EgressDenied, UpstreamEgress
from caduceus_mcp.registry import SECRET_REF_RE, Server

log = logging.getLogger(__name__)


class UpstreamError(RuntimeError):
    """The upstream could not be reached, did not answer in time, or answered with a protocol error."""


class EgressError(UpstreamError):
    """The tenant's egress rules do not let the gateway reach this HTTP server: nothing was sent to it."""


class SecretMissing(UpstreamError):
    """A credential the registry names is not in the secret store."""


@dataclass(frozen=True)
class SecretStore:
    """`<root>/<tenant>/<name>`: one file per secret, readable by the gateway alone."""

    root: Path

    def read(self, tenant: str, name: str) -> str:
        try:
            return (self.root / tenant / name).read_text().rstrip("\n")
        except OSError:
            raise SecretMissing(f"credential {name!r} of tenant {tenant} is not in the gateway's secret store "
                                f"(add it with `caduceus mcp secrets set {tenant} {name}`)") from None

    def write(self, tenant: str, name: str, value: str) -> Path:
        directory = self.root / tenant
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(value)
        return path

    def values(self, tenant: str, names: tuple[str, ...]) -> list[str]:
        """The values of `names` that exist (for redacting results)."""
        found = []
        for name in names:
            with contextlib.suppress(SecretMissing):
                found.append(self.read(tenant, name))
        return found


# Turns a server's argv and environment into the argv that runs it sandboxed (or returns them unchanged).
Launcher = Callable[[Server, tuple[str, ...], dict[str, str]], tuple[tuple[str, ...], dict[str, str]]]


def plain_launcher(server: Server, argv: tuple[str, ...], env: dict[str, str]) -> tuple[tuple[str, ...], dict[str, str]]:
    return argv, env


@dataclass
class Upstream:
    """How to open a session with one registered server."""

    server: Server
    secrets: SecretStore
    launcher: Launcher = plain_launcher
    connect_timeout_s: float = 10.0
    # HTTP servers are reached through these egress rules, those of `workspace` ("": the tenant's; egress.py).
    egress: UpstreamEgress = field(default_factory=UpstreamEgress)
    workspace: str = ""

    def _headers(self) -> dict[str, str]:
        headers = {}
        for header, template in self.server.credentials.headers.items():
            headers[header] = SECRET_REF_RE.sub(lambda m: self.secrets.read(self.server.tenant, m.group(1)), template)
        return headers

    def _env(self) -> dict[str, str]:
        env = dict(self.server.env)
        for variable, secret in self.server.credentials.env.items():
            env[variable] = self.secrets.read(self.server.tenant, secret)
        return env

    def fingerprint(self) -> str:
        """What a running stdio server was started with (command as launched, environment with credentials): a
        change of any of it needs a new server."""
        argv, env = self.launcher(self.server, self.server.command, self._env())
        return hashlib.sha256(json.dumps([argv, sorted(env.items())]).encode()).hexdigest()

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Client]:
        """An initialized SDK client for this server; closing it ends a stdio server."""
        if self.server.transport == "http":
            try:
                proxy = await self.egress.proxy_for(self.server.tenant, self.workspace, self.server.url)
            except EgressDenied as exc:
                raise EgressError(f"MCP server {self.server.name} is not reached: {exc}") from None
            http = httpx2.AsyncClient(headers=self._headers(), timeout=httpx2.Timeout(30.0, read=300.0), proxy=proxy,
                                      trust_env=False)
            transport = streamable_http_client(self.server.url, http_client=http)
        else:
            argv, env = self.launcher(self.server, self.server.command, self._env())
            params = StdioServerParameters(command=argv[0], args=list(argv[1:]), env=env)
            transport = stdio_client(params, errlog=_errlog())
        client = Client(transport, cache=None, client_info=None)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await client.__aenter__()
        except TimeoutError:
            with contextlib.suppress(BaseException):
                await client.__aexit__(None, None, None)
            raise UpstreamError(f"MCP server {self.server.name} did not start within {self.connect_timeout_s:g} s") from None
        except Exception as exc:
            raise UpstreamError(f"MCP server {self.server.name} cannot be reached: {_why(exc)}") from None
        try:
            yield client
        finally:
            with contextlib.suppress(BaseException):
                await client.__aexit__(None, None, None)


class _Live:
    """One stdio server's session, opened and closed by a task of its own (the SDK's transports are task-scoped),
    used by any number of calls meanwhile."""

    def __init__(self, upstream: Upstream, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        self.users = 0
        self.last_used = time.monotonic()
        self.broken = False
        self._client: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(upstream), name=f"mcp session {upstream.server.name}")

    async def _run(self, upstream: Upstream) -> None:
        try:
            async with upstream.session() as client:
                self._client.set_result(client)
                await self._stop.wait()
        except BaseException as exc:
            if not self._client.done():
                self._client.set_exception(exc if isinstance(exc, Exception) else UpstreamError(_why(exc)))
            if not isinstance(exc, Exception):
                raise
        finally:
            self.broken = True

    async def client(self) -> Client:
        return await asyncio.shield(self._client)

    @property
    def alive(self) -> bool:
        return not self.broken and not self._task.done()

    async def close(self) -> None:
        self.broken = True
        self._stop.set()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(self._task), 10)
        if not self._task.done():
            self._task.cancel()


class SessionPool:
    """Live sessions with stdio servers, one per tenant, workspace and server, kept open between calls.

    Starting a sandboxed server and the SDK's handshake takes seconds; a call on a live session takes
    milliseconds. Every call still lists the server's tools in the session it calls in (so the definition it
    checks is the one it calls). A session is closed when nobody used it for `idle_s`, when its server's
    registration, sandbox or credentials change (the next call starts one with the new ones), and when a call
    or listing on it failed (a call that timed out may still be running in it): the next call starts afresh.
    HTTP servers get a session per call (cheap, and reached through the egress rules of the moment).
    """

    def __init__(self, idle_s: float = 300.0) -> None:
        self.idle_s = idle_s
        self._live: dict[tuple[str, str, str], _Live] = {}
        self._retired: list[_Live] = []  # out of use, closed by close_idle once their last call is done
        self._opening: dict[tuple[str, str, str], asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def session(self, upstream: Upstream) -> AsyncIterator[Client]:
        if upstream.server.transport != "stdio":
            async with upstream.session() as client:
                yield client
            return
        live = await self._live_for(upstream)
        live.users += 1
        try:
            yield await live.client()
        except Exception:
            self._retire(live)  # whatever failed in it may have left it unusable, or a timed-out call running
            raise
        finally:
            live.users -= 1
            live.last_used = time.monotonic()

    async def _live_for(self, upstream: Upstream) -> _Live:
        server = upstream.server
        key = (server.tenant, upstream.workspace, server.name)
        fingerprint = upstream.fingerprint()
        async with self._opening.setdefault(key, asyncio.Lock()):
            live = self._live.get(key)
            if live is not None and live.alive and live.fingerprint == fingerprint:
                return live
            if live is not None:
                self._retire(live)
            live = self._live[key] = _Live(upstream, fingerprint)
            try:
                await live.client()
            except BaseException:
                self._retire(live)
                raise
            return live

    def _retire(self, live: _Live) -> None:
        """No new call gets this session; close_idle closes it once its calls are done."""
        live.broken = True
        for key, entry in list(self._live.items()):
            if entry is live:
                del self._live[key]
        if live not in self._retired:
            self._retired.append(live)

    async def close_idle(self) -> int:
        """Close sessions idle for `idle_s` and retired ones nobody uses any more; how many were closed."""
        now = time.monotonic()
        for live in list(self._live.values()):
            if live.users == 0 and (not live.alive or now - live.last_used > self.idle_s):
                self._retire(live)
        closing = [live for live in self._retired if live.users == 0]
        self._retired = [live for live in self._retired if live.users > 0]
        for live in closing:
            await live.close()
        return len(closing)

    async def close_all(self) -> None:
        closing = [*self._live.values(), *self._retired]
        self._live.clear()
        self._retired.clear()
        for live in closing:
            await live.close()

    def __len__(self) -> int:
        return sum(1 for live in self._live.values() if live.alive)


async def list_definitions(client: Client, timeout_s: float) -> list[Definition]:
    """Every tool the server serves now (following pagination)."""
    definitions: list[Definition] = []
    cursor = None
    async with asyncio.timeout(timeout_s):
        while True:
            listed = await client.list_tools(cursor=cursor)
            definitions += [Definition.of(tool) for tool in listed.tools]
            cursor = listed.next_cursor
            if not cursor:
                return definitions


async def call(client: Client, tool: str, args: dict[str, Any], timeout_s: float) -> Any:
    """The raw CallToolResult, or UpstreamError when it takes longer than `timeout_s` or fails."""
    try:
        async with asyncio.timeout(timeout_s):
            return await client.call_tool(tool, args)
    except TimeoutError:
        raise UpstreamError(f"the MCP server did not answer within {timeout_s:g} s") from None
    except Exception as exc:
        if "Invalid structured content" in str(exc):  # the SDK client checks the output schema too
            raise UpstreamError("the result does not match the tool's output schema: "
                                f"{str(exc).splitlines()[-1].strip()[:200]}") from None
        raise UpstreamError(f"the MCP server failed the call: {_why(exc)}") from None


def _why(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_why(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"[:500]


def _errlog():
    # A stdio server's stderr goes to a scratch file, not the gateway's log (it may echo what it was given).
    return tempfile.TemporaryFile(mode="w+")
