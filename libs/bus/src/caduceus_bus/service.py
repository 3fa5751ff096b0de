"""One shape for every process on the bus: connect, run the route table, answer health, drain, stop.

A service subclasses `BusService`, names its route table, and fills in what is its own: `prepare` (build what
the handlers need, once connected; returns their `deps`), `cleanup`, and `health`. `serve()` in
`caduceus_bus.runner` runs any of them as a process; tests start and stop the very same object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from nats.aio.msg import Msg

from caduceus_bus.connection import EventConnection
from caduceus_bus.observability import BUS_CONNECTED, BUS_RECONNECTS, http_app
from caduceus_bus.router import Router
from caduceus_bus.routes import RouteTable
from caduceus_bus.settings import BusSettings
from caduceus_contracts import Event
from caduceus_web import HttpServer

log = logging.getLogger(__name__)


class BusService:
    """A process on the bus running one route table. See the module docstring."""

    table: RouteTable
    # How long a stopping process lets the messages in hand finish before it closes its connection.
    drain_s: float = 10.0

    def __init__(self, bus: BusSettings, *, connection_name: str | None = None, **bound: str) -> None:
        self.bus = bus
        self.connection_name = connection_name or f"caduceus-{self.table.role}"
        self.routes = self.table.bound(**bound)
        self.health_subject = self.table.health_subject.format(**bound) if bound else self.table.health_subject
        self.connection: EventConnection | None = None
        self.router: Router | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.probes: HttpServer | None = None

    # --- what a service fills in ---

    async def prepare(self, connection: EventConnection) -> Any:
        """Build what the handlers need, once connected; returns their `deps`."""
        return self

    async def cleanup(self) -> None:
        """Release what `prepare` built (after the routes stopped, before the connection closes)."""

    def health(self) -> str:
        """"ok", or what the service is waiting for."""
        return "ok"

    def readiness(self) -> dict[str, str | None]:
        """Checks for /readyz: name -> None when fine, else what is wrong. Services add their own."""
        connected = self.connection is not None and self.connection.nc.is_connected and self.router is not None
        health = self.health()
        return {"bus": None if connected else "not connected to NATS", "service": None if health == "ok" else health}

    # --- the shared lifecycle ---

    async def start(self) -> None:
        """Serve HTTP probes (when configured), connect, make sure the stream exists, prepare, subscribe every
        route, then answer health."""
        if self.bus.http_port is not None:
            self.probes = HttpServer(http_app(self.readiness), self.bus.http_host, self.bus.http_port,
                                   what=f"{self.table.role}'s health and metrics", port_setting="CADUCEUS_HTTP_PORT")
            await self.probes.start()
        try:
            self.connection = await EventConnection.connect(self.bus, self.connection_name, role=self.table.role,
                                                            on_reconnect=self._reconnected)
            BUS_CONNECTED.labels(self.table.role).set(1)
            BUS_RECONNECTS.labels(self.table.role)  # shown (as 0) before the first reconnect
            if "stream-setup" in self.table.grants:  # services make sure the stream exists; workers may not
                await self.connection.ensure_stream()
            deps = await self.prepare(self.connection)
            self.router = Router(self.routes, deps, self.connection)
            await self.router.start()
            # Last: a health answer means every subscription is in place.
            await self.connection.nc.subscribe(self.health_subject, cb=self._answer_health)
        except BaseException:
            await self.stop()
            raise
        log.info("%s ready", self.table.role)

    async def publish(self, subject: str, event: Event) -> None:
        """Publish on this service's connection (for parts built before it connects: activities, a web UI)."""
        await self._connected().publish(subject, event)

    async def refuse(self, subject: str, body: bytes, reason: str) -> None:
        """Publish the audited error event for input this service cannot accept."""
        await self._connected().refuse(subject, body, reason)

    def _connected(self) -> EventConnection:
        if self.connection is None:
            raise ConnectionError(f"{self.table.role} is not connected to the bus (yet)")
        return self.connection

    def background(self, work: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run `work` beside the routes until the service stops; a crash is logged, not silent."""
        task = asyncio.create_task(work, name=name)
        task.add_done_callback(_log_crash)
        self._tasks.append(task)
        return task

    async def quiesce(self) -> None:
        """First thing on stop, with the bus still fully working: a service that serves HTTP stops taking requests
        here and finishes those in progress (they may still need events from the bus). Nothing by default."""

    async def stop(self) -> None:
        """Finish HTTP requests in progress (quiesce), stop taking messages, answer those in hand, stop background
        work, release, disconnect."""
        try:
            await self.quiesce()
        except Exception:  # the stop goes on (the bus must still be released), saying what was cut short
            log.exception("%s could not finish its requests in progress before stopping", self.connection_name)
        if self.router is not None:
            await self.router.stop(self.drain_s)
            self.router = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()
        try:
            await self.cleanup()
        finally:
            if self.connection is not None:
                await self.connection.close()
                self.connection = None
                BUS_CONNECTED.labels(self.table.role).set(0)
            if self.probes is not None:
                await self.probes.stop()
                self.probes = None

    async def _reconnected(self) -> None:
        BUS_RECONNECTS.labels(self.table.role).inc()

    async def _answer_health(self, msg: Msg) -> None:
        with contextlib.suppress(Exception):
            await msg.respond(self.health().encode())


def _log_crash(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s stopped: %r", task.get_name(), task.exception(), exc_info=task.exception())
