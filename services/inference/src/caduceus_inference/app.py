"""Wiring: the OpenAI-compatible endpoint (gateway.py) around the route table in handlers.py,
built the same way by `__main__` and the tests."""

from __future__ import annotations

import logging

import httpx

from caduceus_bus import BusService, EventConnection
from caduceus_contracts import ReloadingKeyring
from caduceus_inference.gateway import Gateway
from caduceus_inference.handlers import ROUTES, PendingDecisions
from caduceus_inference.settings import InferenceSettings
from caduceus_web import HttpServer

SERVICE = ROUTES.role
HEALTH_SUBJECT = ROUTES.health_subject
log = logging.getLogger(__name__)


class InferenceService(BusService):
    """The inference gateway: serves planners' model calls, asks policy for each, follows its decisions."""

    table = ROUTES

    def __init__(self, settings: InferenceSettings) -> None:
        super().__init__(settings)
        self.settings = settings
        self.pending = PendingDecisions()
        timeout = httpx.Timeout(settings.inference_upstream_timeout_s, connect=5.0)
        self.client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self.gateway = Gateway(settings, ReloadingKeyring(settings.keys_dir), self.publish, self.pending,
                               self.client)
        self.http = HttpServer(self.gateway.app(), settings.inference_host, settings.inference_port,
                               what="the inference gateway", port_setting="CADUCEUS_INFERENCE_PORT",
                               shared=settings.shared_ports, grace_s=settings.inference_drain_s)

    @property
    def url(self) -> str:
        """The base URL planners use (`.../v1`)."""
        return f"http://{self.settings.inference_host}:{self.http.port}/v1"

    async def prepare(self, connection: EventConnection) -> PendingDecisions:
        await self.http.start()
        log.info("inference gateway at %s; upstreams %s", self.url, ", ".join(sorted(
            self.settings.inference_upstreams)))
        return self.pending

    async def quiesce(self) -> None:
        """On SIGTERM: no new model call; those in progress (streams too) finish within `inference_drain_s`,
        with policy's decisions still arriving and their usage still published."""
        await self.http.stop()

    async def cleanup(self) -> None:
        await self.http.stop()
        await self.client.aclose()


def build(settings: InferenceSettings | None = None) -> InferenceService:
    """The service from settings (the environment by default)."""
    return InferenceService(settings or InferenceSettings())
