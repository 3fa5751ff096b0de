"""What an operator's tools read off every process: `/healthz`, `/readyz` and Prometheus `/metrics` over HTTP.

Served by the runtime (BusService) when `CADUCEUS_HTTP_PORT` is set. `/healthz` answers 200 while the process
runs (a liveness probe); `/readyz` answers 200 only when the bus is connected and every check of the service
passes (its database, Temporal...), else 503 with the checks as JSON (a readiness probe); `/metrics` is the
Prometheus text format of every metric this process registered. The runtime counts every message each route
handles and how long it took, and the bus's reconnects; services add their own (decisions, approvals, calls,
workers, audit lag).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route as HttpRoute

MESSAGES = Counter("caduceus_messages_total", "Messages a route handled, by outcome (handled, malformed, failed)",
                   ["service", "subject", "outcome"])
MESSAGE_SECONDS = Histogram("caduceus_message_seconds", "Time to handle one message (or one batch of a pull route)",
                            ["service", "subject"], buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5,
                                                             1, 2.5, 5, 10, 30))
BUS_RECONNECTS = Counter("caduceus_bus_reconnects_total", "Times the NATS connection was re-established", ["service"])
BUS_CONNECTED = Gauge("caduceus_bus_connected", "1 while the NATS connection is up", ["service"])

# Checks a service answers for /readyz: name -> None when fine, else what is wrong.
Checks = Callable[[], dict[str, str | None]]


def http_app(checks: Checks) -> Starlette:
    """The probe and metrics endpoints for one process."""

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        results = checks()
        failing = {name: problem for name, problem in results.items() if problem}
        body = {"ready": not failing, "checks": {name: problem or "ok" for name, problem in results.items()}}
        return JSONResponse(body, status_code=503 if failing else 200)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[HttpRoute("/healthz", healthz), HttpRoute("/readyz", readyz),
                             HttpRoute("/metrics", metrics)])
