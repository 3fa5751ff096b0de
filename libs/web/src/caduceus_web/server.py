"""uvicorn serving an ASGI app inside the service's own event loop (the service handles the signals)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn


class HttpUnavailable(RuntimeError):
    """The server cannot listen where it was asked to, or did not start; the message says what to change."""


class _LoopServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """Serves `app` on host:port until `stop()`. `what` names it and `port_setting` is how to move it, in errors.

    shared=True lets replicas of one service listen on the same port (SO_REUSEPORT): the kernel spreads new
    connections over the live ones, so one replica killed leaves the port served by the others.
    """

    def __init__(self, app, host: str, port: int, *, what: str, port_setting: str, shared: bool = False,
                 grace_s: float = 2.0) -> None:
        self.app = app
        # On stop: no new connection is taken, and requests in progress get this long to finish.
        self.grace_s = grace_s
        self.host = host
        self.port = port
        self.what = what
        self.port_setting = port_setting
        self.shared = shared
        self._server: _LoopServer | None = None
        self._task: asyncio.Task | None = None

    async def start(self, timeout: float = 10.0) -> None:
        """Bind the port first (HttpUnavailable when it is taken), then serve; returns once it accepts."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise HttpUnavailable(f"cannot listen on {self.host}:{self.port} for {self.what} ({exc.strerror}): "
                                  f"stop what uses the port, or choose another with {self.port_setting} (0 "
                                  "disables it)") from None
        config = uvicorn.Config(self.app, log_config=None, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=self.grace_s)
        self._server = _LoopServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name=self.what)
        deadline = asyncio.get_running_loop().time() + timeout
        while not self._server.started:
            if self._task.done() or asyncio.get_running_loop().time() > deadline:
                await self.stop()
                raise HttpUnavailable(f"{self.what} did not start on {self.host}:{self.port}")
            await asyncio.sleep(0.01)

    def stop_listening(self) -> None:
        """Take no new connection from now on (replicas sharing the port get them); connections already open may
        still send requests, and `stop()` ends the rest. For a service that first finishes work of its own that
        open responses are waiting for (the web chat's turns, whose replies its event streams carry)."""
        if self._server is not None:
            for listening in self._server.servers:
                listening.close()

    async def stop(self) -> None:
        """Take no new connection, close idle ones, give requests in progress `grace_s` to finish, then cut them."""
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, SystemExit):
            try:
                await asyncio.wait_for(self._task, self.grace_s + 3)
            except TimeoutError:
                self._task.cancel()
        self._server = self._task = None
