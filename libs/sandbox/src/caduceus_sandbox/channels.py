"""Channels: the only ways out of a sandbox, each granted by the broker.

A sandboxed worker has its own network namespace with nothing but loopback. For each
channel (the bus, the model endpoint, the trace collector, the egress proxy) the broker
listens on a unix socket that is bind-mounted into the sandbox, and the launcher inside
listens on a loopback address of the sandbox's own namespace and relays to that socket.
So the worker connects to an ordinary TCP address, and nothing else is reachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from caduceus_sandbox.egress import EgressProxy
from caduceus_sandbox.splice import splice

log = logging.getLogger("caduceus.sandbox.channels")
INSIDE_SOCKETS = "/run/caduceus/channels"
DEFAULT_PORTS = {"http": 80, "https": 443, "nats": 4222, "tls": 4222}


class ChannelError(ValueError):
    """An endpoint cannot be turned into a channel (no host, unknown port)."""


@dataclass(frozen=True)
class Channel:
    """One way out: `name`, the address the sandbox sees, and where the broker relays it.

    target None means the broker's egress proxy answers instead of a fixed relay.
    alias is the host name the sandbox resolves to inside_host (its /etc/hosts).
    """

    name: str
    inside_host: str
    inside_port: int
    target: tuple[str, int] | None = None
    alias: str | None = None

    @property
    def socket_name(self) -> str:
        return f"{self.name}.sock"

    @property
    def inside_socket(self) -> str:
        return f"{INSIDE_SOCKETS}/{self.socket_name}"

    def to_json(self) -> dict:
        return {"name": self.name, "inside_host": self.inside_host, "inside_port": self.inside_port,
                "socket": self.inside_socket}


def inside_address(index: int) -> str:
    """The loopback address of channel number `index` inside the sandbox (127.0.0.1 stays free)."""
    return f"127.0.0.{10 + index}"


def relay_channel(name: str, url: str, index: int) -> tuple[Channel, str]:
    """A relayed channel to the endpoint of `url`, and the URL the sandboxed worker uses for it.

    A host name is kept (TLS certificates name it) and resolved inside the sandbox to the
    channel's loopback address; an IP literal is replaced by that address.
    """
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise ChannelError(f"{name} endpoint {url!r} has no host")
    port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    if port is None:
        raise ChannelError(f"{name} endpoint {url!r} has no port and no known default for {parts.scheme!r}")
    inside = inside_address(index)
    try:
        ipaddress.ip_address(host)
        alias = None
        netloc = parts.netloc.replace(f"[{host}]" if ":" in host else host, inside)
        url = urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        alias = host
    return Channel(name, inside, port, (host, port), alias), url


def egress_channel(index: int, port: int = 3128) -> tuple[Channel, str]:
    """The egress proxy channel and the proxy URL tools use (HTTP_PROXY/HTTPS_PROXY)."""
    channel = Channel("egress", inside_address(index), port)
    return channel, f"http://{channel.inside_host}:{port}"


class ChannelServers:
    """The broker's side of one sandbox's channels: a unix socket per channel in `socket_dir`."""

    def __init__(self, socket_dir: Path, channels: list[Channel], egress: EgressProxy | None = None) -> None:
        self.socket_dir = socket_dir
        self.channels = channels
        self.egress = egress
        self._servers: list[asyncio.AbstractServer] = []
        self._connections: set[asyncio.StreamWriter] = set()

    async def start(self, owner: tuple[int, int] | None = None) -> None:
        """Listen on every channel's socket; `owner` (uid, gid) may connect (the sandbox's user)."""
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        for channel in self.channels:
            path = self.socket_dir / channel.socket_name
            path.unlink(missing_ok=True)
            server = await asyncio.start_unix_server(self._handler(channel), path=str(path))
            self._servers.append(server)
            os.chmod(path, 0o600)
            if owner is not None:
                os.chown(path, *owner)

    def _handler(self, channel: Channel):
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._connections.add(writer)
            try:
                if channel.target is None:
                    if self.egress is None:
                        writer.close()
                        return
                    await self.egress.handle(reader, writer)
                    return
                try:
                    upstream = await asyncio.wait_for(asyncio.open_connection(*channel.target), 10)
                except (OSError, TimeoutError) as exc:
                    log.warning("channel %s: cannot reach %s:%s: %s", channel.name, *channel.target, exc)
                    writer.close()
                    return
                await splice((reader, writer), upstream)
            finally:
                self._connections.discard(writer)

        return handle

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        # Closing the sandbox's side ends each relay (cancelling them would log spurious errors on 3.11).
        for writer in list(self._connections):
            writer.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()
