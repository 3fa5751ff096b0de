"""Where exported records go: a text stream, a syslog collector over UDP or TCP, an OTLP/HTTP endpoint."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any, Protocol, TextIO
from urllib.parse import urlsplit

from caduceus_audit.export.syslog import octet_counted

# RFC 5426 receivers may truncate longer datagrams; above this no IPv4 datagram fits at all.
MAX_UDP_BYTES = 65_000
CONNECT_TIMEOUT_S = 10.0


class DeliveryError(Exception):
    """Exported records could not be delivered; the message says where and what to check."""


class Sink(Protocol):
    def send(self, items: Sequence[Any]) -> None: ...

    def close(self) -> None: ...


class LineSink:
    """One line per item on a text stream (stdout, or a file it then closes when `owned`)."""

    def __init__(self, stream: TextIO, *, owned: bool = False) -> None:
        self.stream, self.owned = stream, owned

    def send(self, items: Sequence[Any]) -> None:
        for item in items:
            self.stream.write(f"{item}\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()
        if self.owned:
            self.stream.close()


class SyslogSink:
    """RFC 5424 messages to a collector: one UDP datagram each, or octet-counted frames on one TCP connection."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("udp", "tcp") or not parts.hostname or not parts.port:
            raise DeliveryError(f"syslog destination {url!r} is not udp://HOST:PORT or tcp://HOST:PORT")
        self.url, self.scheme, self.address = url, parts.scheme, (parts.hostname, parts.port)
        self._socket: socket.socket | None = None

    def _connected(self) -> socket.socket:
        if self._socket is None:
            try:
                if self.scheme == "udp":
                    self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                else:
                    self._socket = socket.create_connection(self.address, timeout=CONNECT_TIMEOUT_S)
            except OSError as exc:
                raise DeliveryError(f"cannot connect to the syslog collector at {self.url}: {exc}") from None
        return self._socket

    def send(self, items: Sequence[Any]) -> None:
        for message in items:
            try:
                if self.scheme == "udp":
                    self._connected().sendto(str(message).encode("utf-8")[:MAX_UDP_BYTES], self.address)
                else:
                    self._connected().sendall(octet_counted(str(message)))
            except OSError as exc:
                self.close()
                raise DeliveryError(f"sending to the syslog collector at {self.url} failed: {exc}") from None

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class OtlpSink:
    """Spans to an OTLP/HTTP endpoint (`http://collector:4318`; `/v1/traces` is added)."""

    def __init__(self, endpoint: str) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        self.endpoint = endpoint.rstrip("/")
        traces = self.endpoint if self.endpoint.endswith("/v1/traces") else f"{self.endpoint}/v1/traces"
        self.exporter = OTLPSpanExporter(endpoint=traces, timeout=CONNECT_TIMEOUT_S)

    def send(self, items: Sequence[Any]) -> None:
        from opentelemetry.sdk.trace.export import SpanExportResult

        if items and self.exporter.export(list(items)) is not SpanExportResult.SUCCESS:
            raise DeliveryError(f"the OTLP endpoint {self.endpoint} did not accept {len(items)} spans: check that a "
                                "collector listens there (OTLP over HTTP)")

    def close(self) -> None:
        self.exporter.shutdown()
