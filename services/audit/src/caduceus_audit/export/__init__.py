"""Audit records in the formats SIEMs and tracing backends read: JSONL, OCSF, CEF, syslog (RFC 5424), OTel spans.

Each format module turns a `RecordView` (see domain.narrative) into its output and does
no I/O; `caduceus_audit.exporting` reads the store and delivers what they make.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version


@cache
def product_version() -> str:
    """The caduceus-audit version, as the exported records name their producer."""
    try:
        return version("caduceus-audit")
    except PackageNotFoundError:
        return "0"
