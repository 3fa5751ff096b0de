"""Serving an ASGI app inside a service's own event loop: the service, not uvicorn, handles the signals."""

from caduceus_web.server import HttpServer, HttpUnavailable
from caduceus_web.streams import until_stopped

__all__ = ["HttpServer", "HttpUnavailable", "until_stopped"]
