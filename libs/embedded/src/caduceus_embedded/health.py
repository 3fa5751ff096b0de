"""Waiting until services are ready: the NATS health request, or an HTTP GET for the model."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

import nats
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from caduceus_bus import BusSettings, auth_options
from caduceus_embedded.services import RunningService, ServiceFailed

# One probe must be short: a service that is still importing simply does not answer yet.
PROBE_TIMEOUT_S = 0.5


async def wait_ready(bus: BusSettings, services: Sequence[RunningService], timeout: float, *,
                     on_ready: Callable[[RunningService], None] = lambda _: None,
                     cancelled: Callable[[], bool] = lambda: False,
                     start_again: Callable[[RunningService, int], RunningService | None] = lambda _s, _c: None
                     ) -> bool:
    """Poll every service until each is ready; raise ServiceFailed for the first one that exits or times out.

    A service that exits while starting is handed to `start_again` with its exit code: the process it returns
    (started again) is waited for instead; None fails the start. Returns False when cancelled (the stack is
    stopping), True when all are ready.
    """
    nc = await nats.connect(bus.nats_servers, name="caduceus-up-health", connect_timeout=5, max_reconnect_attempts=-1,
                            **auth_options(bus))
    try:
        pending = list(services)
        deadline = time.monotonic() + timeout
        while pending:
            for service in list(pending):
                if cancelled():
                    return False
                code = service.exit_code()
                if code is not None:
                    fresh = start_again(service, code)
                    if fresh is None:
                        raise ServiceFailed(service.key, f"exited with code {code} while starting", service.log_path)
                    pending[pending.index(service)] = fresh
                    continue
                if await _answers(nc, service):
                    pending.remove(service)
                    on_ready(service)
            if pending and time.monotonic() > deadline:
                late = pending[0]
                how = late.spec.ready_url or late.spec.health_subject
                raise ServiceFailed(late.key, f"was not ready within {timeout:.0f}s (no answer on {how})",
                                    late.log_path)
            if pending:
                await asyncio.sleep(0.1)
        return True
    finally:
        await nc.close()


async def _answers(nc: Client, service: RunningService) -> bool:
    if service.spec.ready_url:
        return await asyncio.to_thread(_http_ok, service.spec.ready_url)
    try:
        reply = await nc.request(service.spec.health_subject, b"", timeout=PROBE_TIMEOUT_S)
    except (NoRespondersError, NatsTimeout):
        return False
    return reply.data == b"ok"


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False
