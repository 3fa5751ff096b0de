"""OpenTelemetry for every Caduceus process: OTLP export when configured, nothing otherwise."""

from __future__ import annotations

import logging

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)


class TelemetrySettings(BaseSettings):
    """Standard OTel variables (no CADUCEUS_ prefix: collectors and operators already know these)."""

    model_config = SettingsConfigDict(extra="ignore")

    otel_exporter_otlp_endpoint: str | None = Field(default=None, description=(
        "The OTLP/HTTP collector traces go to (unset: no export, spans are no-ops)."))
    otel_service_namespace: str = Field(default="caduceus", description="The `service.namespace` resource attribute.")


def setup_telemetry(service: str, settings: TelemetrySettings | None = None) -> TracerProvider | None:
    """Install a tracer provider exporting OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set.

    Without an endpoint nothing is exported and nothing is installed: spans are no-ops.
    """
    settings = settings or TelemetrySettings()
    if not settings.otel_exporter_otlp_endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(
        resource=Resource.create({"service.name": f"caduceus-{service}",
                                  "service.namespace": settings.otel_service_namespace})
    )
    # The exporter reads OTEL_EXPORTER_OTLP_* itself (endpoint, headers, protocol details).
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    log.info("exporting traces for %s to %s", service, settings.otel_exporter_otlp_endpoint)
    return provider


def shutdown_telemetry(provider: TracerProvider | None) -> None:
    if provider is not None:
        provider.shutdown()


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)
