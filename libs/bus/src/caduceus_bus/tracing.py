"""W3C trace context in NATS headers, so one trace covers a chat turn and all its tool calls."""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import context, propagate


def inject_headers(headers: dict[str, str]) -> dict[str, str]:
    propagate.inject(headers)
    return headers


def extract_context(headers: Mapping[str, str] | None) -> context.Context:
    return propagate.extract(dict(headers or {}))
