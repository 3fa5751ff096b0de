"""The egress proxy: the only way out of an executor's sandbox, for allowlisted hosts only.

An HTTP proxy (CONNECT for TLS, absolute-URI requests for plain HTTP) that the broker runs
outside the sandbox, one per executor, behind the unix socket the sandbox sees as
HTTP(S)_PROXY. For each request it checks the host and port against the policy's
allowlist, resolves the name itself, refuses when any resolved address is loopback,
private, link-local, metadata or otherwise non-public (unless the policy allows that
range), and then connects to the checked address, never resolving again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from caduceus_sandbox.addresses import IPAddress, refusal
from caduceus_sandbox.policy import Network
from caduceus_sandbox.splice import splice

log = logging.getLogger("caduceus.sandbox.egress")
HEAD_LIMIT = 65536
HEAD_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]


class EgressRefused(Exception):
    """The proxy will not open this connection; the message says why (it is sent to the client)."""


@dataclass(frozen=True)
class Request:
    method: str
    host: str
    port: int
    head: bytes  # what to send upstream first (empty for CONNECT)


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({ipaddress.ip_address(info[4][0]) for info in infos}, key=lambda a: (a.version, int(a)))


class EgressProxy:
    """Serves one client connection at a time per call of `handle`; see the module docstring."""

    def __init__(self, network: Network, *, resolver: Resolver = system_resolver,
                 on_refused: Callable[[str], None] | None = None) -> None:
        self.network = network
        self.resolver = resolver
        self.on_refused = on_refused

    async def admit(self, host: str, port: int) -> list[IPAddress]:
        """The addresses the proxy may connect to for host:port, or EgressRefused saying why not."""
        if self.network.egress != "allowlist" or not any(r.matches(host, port) for r in self.network.allow):
            raise EgressRefused(f"{host}:{port} is not on this workspace's egress allowlist")
        try:
            addresses = await self.resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise EgressRefused(f"{host} does not resolve: {exc}") from None
        if not addresses:
            raise EgressRefused(f"{host} does not resolve")
        for address in addresses:
            reason = refusal(address, self.network.allow_addresses)
            if reason is not None:
                raise EgressRefused(f"{host} resolves to {reason}")
        return addresses

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await _read_request(reader)
            addresses = await self.admit(request.host, request.port)
            upstream = await _connect(addresses, request.port)
        except EgressRefused as exc:
            await self._refuse(writer, 403, str(exc), reader)
            return
        except _BadRequest as exc:
            await self._refuse(writer, 400, str(exc), reader)
            return
        except (OSError, TimeoutError) as exc:
            await self._refuse(writer, 502, f"could not connect: {exc}", reader)
            return
        if request.method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            upstream[1].write(request.head)
        await writer.drain()
        log.info("egress %s %s:%d", request.method, request.host, request.port)
        await splice((reader, writer), upstream)

    async def _refuse(self, writer: asyncio.StreamWriter, status: int, reason: str,
                      reader: asyncio.StreamReader) -> None:
        log.warning("egress refused: %s", reason)
        if self.on_refused is not None and status == 403:
            self.on_refused(reason)
        body = f"caduceus egress proxy: {reason}\n".encode()
        phrase = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}[status]
        writer.write(f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                     f"Connection: close\r\n\r\n".encode() + body)
        try:
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        writer.close()


class _BadRequest(Exception):
    pass


async def _read_request(reader: asyncio.StreamReader) -> Request:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
    except asyncio.LimitOverrunError:
        raise _BadRequest(f"request head larger than {HEAD_LIMIT} bytes") from None
    except (asyncio.IncompleteReadError, TimeoutError):
        raise _BadRequest("incomplete request") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest("not an HTTP/1.x proxy request")
    method, target, version = parts
    if method == "CONNECT":
        host, _, port = target.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise _BadRequest("CONNECT needs host:port")
        return Request(method, host.lower(), int(port), b"")
    url = urlsplit(target)
    if url.scheme != "http" or not url.hostname:
        raise _BadRequest("plain requests must use an absolute http:// URL (use CONNECT for https)")
    headers = [line for line in lines[1:] if line and not line.lower().startswith(("proxy-", "connection:"))]
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    upstream_head = "\r\n".join([f"{method} {path} {version}", *headers, "Connection: close", "", ""]).encode("latin-1")
    return Request(method, url.hostname.lower(), url.port or 80, upstream_head)


async def _connect(addresses: list[IPAddress], port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    error: Exception | None = None
    for address in addresses:
        try:
            return await asyncio.wait_for(asyncio.open_connection(str(address), port), CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            error = exc
    raise OSError(f"no address of the host answered on port {port}: {error}")
