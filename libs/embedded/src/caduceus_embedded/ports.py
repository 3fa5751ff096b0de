"""Port helpers: find free loopback ports, and say clearly when a wanted port is busy."""

from __future__ import annotations

import random
import socket
import time
from dataclasses import dataclass, fields
from pathlib import Path


class PortBusy(RuntimeError):
    """A port the stack needs is taken by another process."""


def free_port() -> int:
    """A loopback port nothing listens on right now (for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_block(count: int, avoid: set[int] = frozenset(), attempts: int = 200) -> int:
    """The first of `count` consecutive loopback ports nothing uses right now (for tests).

    Chosen below the kernel's ephemeral range: there, the stack's own outgoing connections (each takes a local
    port from that range) could take one of the block before the service that needs it binds it.
    """
    low = min(_ephemeral_low(), 65535) - count
    for _ in range(attempts):
        first = random.randrange(10_000, low) if low > 10_000 else free_port()
        ports = range(first, first + count)
        if first + count <= 65535 and not avoid.intersection(ports) and all(_is_free(p) for p in ports):
            return first
    raise PortBusy(f"found no {count} consecutive free ports")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ensure_free(port: int, what: str, flag: str) -> None:
    """Raise PortBusy, naming the flag that changes it, when port is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers themselves bind: connections of a stack that just stopped (TIME_WAIT) are no conflict.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise PortBusy(
                f"port {port} for {what} is already in use: stop what uses it (`ss -ltnp 'sport = :{port}'`) "
                f"or choose another with {flag}"
            ) from None


def wait_for_port(port: int, timeout: float, host: str = "127.0.0.1") -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex((host, port)) == 0:
                return True
        time.sleep(0.01)
    return False


@dataclass(frozen=True)
class StackPorts:
    """The loopback ports of the embedded stack; each one has a `caduceus up` flag."""

    nats: int = 4222
    temporal: int = 7233
    temporal_ui: int = 8233
    issuer: int = 8900
    model: int = 8901
    approval_ui: int = 8902
    webchat: int = 8903
    mcp_endpoint: int = 8904
    inference: int = 8905
    # The first of one port per Caduceus service for /healthz, /readyz and /metrics (in SERVICE_HTTP_ORDER);
    # with replicas, one such block per replica, one after the other.
    http: int = 8910

    @classmethod
    def free(cls, replicas: int = 1) -> "StackPorts":
        """Ports nothing uses right now, so tests can run beside a real stack."""
        ports = {f.name: free_port() for f in fields(cls) if f.name != "http"}
        return cls(**ports, http=free_block(len(SERVICE_HTTP_ORDER) * replicas, avoid=set(ports.values())))

    def http_port(self, service: str, replica: int = 1) -> int:
        """Where replica `replica` (from 1) of `service` serves its health and metrics."""
        return self.http + len(SERVICE_HTTP_ORDER) * (replica - 1) + SERVICE_HTTP_ORDER.index(service)

    def check(self, *, model: bool = True, replicas: int = 1) -> None:
        """Fail before anything starts when a port is busy or asked for twice.

        model=False skips the scripted model's port (an external endpoint is configured); replicas is how many
        health ports each service needs.
        """
        wanted = [(getattr(self, name), what, flag) for name, (what, flag) in PORT_USES.items()
                  if model or name != "model"]
        wanted += [(self.http_port(service, replica), f"{service}'s health and metrics", "--http-port")
                   for replica in range(1, replicas + 1) for service in SERVICE_HTTP_ORDER]
        seen: dict[int, str] = {}
        for port, _, flag in wanted:
            if port in seen:
                raise PortBusy(f"{seen[port]} and {flag} both ask for port {port}: give each its own port")
            seen[port] = flag
        for port, what, flag in wanted:
            ensure_free(port, what, flag)


# The services that serve health and metrics over HTTP, in the order of their ports from StackPorts.http.
SERVICE_HTTP_ORDER = ("audit", "identity", "policy", "approval", "broker", "gateway", "mcp", "inference")

PORT_USES = {
    "nats": ("NATS", "--nats-port"),
    "temporal": ("Temporal", "--temporal-port"),
    "temporal_ui": ("the Temporal Web UI", "--temporal-ui-port"),
    "issuer": ("the dev OIDC issuer", "--issuer-port"),
    "model": ("the scripted model", "--model-port"),
    "approval_ui": ("the approvals UI", "--approval-ui-port"),
    "webchat": ("the web chat", "--webchat-port"),
    "mcp_endpoint": ("the MCP endpoint for other MCP clients", "--mcp-port"),
    "inference": ("the inference gateway", "--inference-port"),
}
