"""Port helpers: find free loopback ports, and say clearly when a wanted port is busy."""

from __future__ import annotations

import socket
import time


class PortBusy(RuntimeError):
    """A port the stack needs is taken by another process."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_free(port: int, what: str, flag: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
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
