"""Wiring: the worker pool and the broker's handlers around the route table in handlers.py."""

from __future__ import annotations

import logging
import time

from prometheus_client import Gauge

from caduceus_broker.catch_up import read_back
from caduceus_broker.handlers import PENDING_TTL_S, ROUTES, BrokerHandlers
from caduceus_broker.lease import Leases, broker_id
from caduceus_broker.ledger import create_ledger
from caduceus_broker.settings import BrokerSettings, ModelSettings
from caduceus_broker.workers import Worker, WorkerPool
from caduceus_bus import BusService, BusSettings, EventConnection

SERVICE = ROUTES.role
log = logging.getLogger("caduceus.broker")
WORKERS_RUNNING = Gauge("caduceus_broker_workers_running", "Planner/executor pairs this broker runs")


class BrokerApp(BusService):
    """The broker service: starts workers for turns, dispatches decided calls, stops idle workers."""

    table = ROUTES

    def __init__(self, settings: BrokerSettings, bus: BusSettings, model: ModelSettings) -> None:
        super().__init__(bus)
        self.settings = settings
        self.model = model
        self.handlers: BrokerHandlers | None = None
        self.leases: Leases | None = None
        self.broker_id = broker_id()

    async def prepare(self, connection: EventConnection) -> BrokerHandlers:
        pool = WorkerPool(self.settings, self.bus, self.model, connection.nc, self._report_worker)
        # Before any call is dispatched: the MCP gateway takes its calls in this bucket too (no worker involved).
        await create_ledger(connection.js, self.settings.used_decisions_replicas)
        # Exactly one replica runs each workspace's planner and executor: the one holding its lease.
        self.leases = await Leases.open(connection.js, self.broker_id, self.settings.lease_ttl_s,
                                        replicas=self.bus.stream_replicas, on_lost=self._lease_lost)
        self.handlers = BrokerHandlers(connection, pool, self.settings.keys, self.settings.decision_timeout_s,
                                       self.leases)
        self.handlers.caught_up.clear()  # until start() has read back what is in flight
        WORKERS_RUNNING.set_function(lambda: len(pool.workers))
        self.background(pool.watch(), "broker-worker-watch")
        self.background(self.leases.keep(), "broker-lease-renewal")
        self.background(self.handlers.watch_leases(), "broker-lease-watch")
        return self.handlers

    async def start(self) -> None:
        """Subscribe (the routes wait), then read back the turns and calls published before this replica started
        and not answered yet, so that it can answer them if it takes their workspace over; then handle messages."""
        await super().start()
        assert self.handlers is not None and self.connection is not None
        started = time.monotonic()
        try:
            events = await read_back(self.connection.nc, self.connection.js, self.bus.stream_name, PENDING_TTL_S)
        except Exception as exc:  # not worse than a broker that never read back: it knows what comes from now on
            log.warning("could not read back what is in flight (%s: %s); handling what comes from now on",
                        type(exc).__name__, exc)
            events = []
        await self.handlers.catch_up(events)
        waiting = sum(len(seen.turns) + len(seen.calls) for seen in self.handlers.in_flight.values())
        log.info("read back %d event(s) of the last %g s in %.1f s: %d turn(s) and call(s) not answered yet",
                 len(events), PENDING_TTL_S, time.monotonic() - started, waiting)

    def health(self) -> str:
        if self.handlers is not None and not self.handlers.caught_up.is_set():
            return "reading back the turns and calls in flight"
        return "ok"

    async def _lease_lost(self, tenant: str, workspace: str, reason: str) -> None:
        assert self.handlers is not None
        await self.handlers.on_lease_lost(tenant, workspace, reason)

    async def _report_worker(self, worker: Worker, role: str, state: str, detail: str) -> None:
        assert self.handlers is not None
        await self.handlers.report_worker(worker, role, state, detail)

    async def cleanup(self) -> None:
        if self.handlers is not None:
            await self.handlers.pool.stop_all()
        if self.leases is not None:  # the workers are stopped: another replica may take their workspaces now
            await self.leases.release_all()


def build() -> BrokerApp:
    """The broker from the environment's settings."""
    return BrokerApp(BrokerSettings(), BusSettings(), ModelSettings())
