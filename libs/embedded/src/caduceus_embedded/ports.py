"""Port helpers: find free loopback ports, and say clearly when a wanted port is busy."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, fields


class PortBusy(RuntimeError):
    """A port the stack needs is taken by another process."""


def free_port() -> int:
    """A loopback port nothing listens on right now (for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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

    @classmethod
    def free(cls) -> "StackPorts":
        """Ports nothing uses right now, so tests can run beside a real stack."""
        return cls(*(free_port() for _ in fields(cls)))

    def check(self, *, model: bool = True) -> None:
        """Fail before anything starts when a port is busy or asked for twice.

        model=False skips the scripted model's port (an external endpoint is configured).
        """
        wanted = [(getattr(self, name), what, flag) for name, (what, flag) in PORT_USES.items()
                  if model or name != "model"]
        seen: dict[int, str] = {}
        for port, _, flag in wanted:
            if port in seen:
                raise PortBusy(f"{seen[port]} and {flag} both ask for port {port}: give each its own port")
            seen[port] = flag
        for port, what, flag in wanted:
            ensure_free(port, what, flag)


PORT_USES = {
    "nats": ("NATS", "--nats-port"),
    "temporal": ("Temporal", "--temporal-port"),
    "temporal_ui": ("the Temporal Web UI", "--temporal-ui-port"),
    "issuer": ("the dev OIDC issuer", "--issuer-port"),
    "model": ("the scripted model", "--model-port"),
    "approval_ui": ("the approvals UI", "--approval-ui-port"),
}
