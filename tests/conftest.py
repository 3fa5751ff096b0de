"""The whole embedded stack, started once for the end-to-end tests: real NATS, Temporal, Hermes, every service."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from caduceus_embedded.ports import StackPorts, free_port
from caduceus_embedded.stack import EmbeddedStack


@dataclass
class OtlpCollector:
    """An OTLP/HTTP endpoint on loopback that keeps every span export it receives."""

    url: str
    exports: list[bytes] = field(default_factory=list)

    def spans(self, since: int = 0) -> list[tuple[str, str, str]]:
        """(service.name, span name, trace id hex) of every span received (in exports from number `since` on)."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        found = []
        for body in list(self.exports)[since:]:
            request = ExportTraceServiceRequest.FromString(body)
            for resource_spans in request.resource_spans:
                service = next((a.value.string_value for a in resource_spans.resource.attributes
                                if a.key == "service.name"), "")
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        found.append((service, span.name, span.trace_id.hex()))
        return found


@pytest.fixture(scope="session")
def otlp_collector() -> Iterator[OtlpCollector]:
    collector = OtlpCollector("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            collector.exports.append(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    collector.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield collector
    server.shutdown()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, otlp_collector: OtlpCollector) -> Iterator[EmbeddedStack]:
    """The embedded stack on free ports in a throwaway state dir, exporting traces to the test collector."""
    state_dir = tmp_path_factory.mktemp("stack")
    saved = {k: os.environ.get(k) for k in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_BSP_SCHEDULE_DELAY",
                                            "CADUCEUS_MODEL_BASE_URL", "CADUCEUS_AUDIT_CHECKPOINT_INTERVAL_S",
                                            "CADUCEUS_ENDPOINT_APPROVAL_WAIT_S")}
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_collector.url
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "200"  # export spans quickly
    os.environ["CADUCEUS_AUDIT_CHECKPOINT_INTERVAL_S"] = "1"  # sign chain heads within a second
    os.environ.pop("CADUCEUS_MODEL_BASE_URL", None)  # always the scripted model here
    os.environ["CADUCEUS_ENDPOINT_APPROVAL_WAIT_S"] = "5"  # an MCP client told "waiting for approval" sooner
    embedded = EmbeddedStack(state_dir, StackPorts.free())
    try:
        embedded.start()
        yield embedded
    finally:
        embedded.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
