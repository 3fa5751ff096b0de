"""Audit: every bus event stored once, redacted, in per-tenant hash chains in SQL.

The public API (what the CLI uses): the store, verification against held checkpoints, export and delivery to a
SIEM, incident timelines, replay against another policy, retention.
"""

from caduceus_audit.adapters.checkpoint_sources import (
    CheckpointSourceError,
    read_bus_checkpoints,
    read_checkpoint_file,
    write_checkpoint_file,
)
from caduceus_audit.adapters.database import sqlite_path
from caduceus_audit.adapters.delivery import DeliveryError, LineSink, OtlpSink, Sink, SyslogSink
from caduceus_audit.adapters.store import (
    AppendOutcome,
    AuditRecord,
    AuditStore,
    RecordFilter,
    StoreRefused,
    StoreUnavailable,
)
from caduceus_audit.domain.narrative import Narrator
from caduceus_audit.domain.timeline import CallStory, Moment, Timeline, build_timeline
from caduceus_audit.domain.verification import ChainVerdict
from caduceus_audit.exporting import Export, Formatter
from caduceus_audit.handlers import ROUTES
from caduceus_audit.recorded import RecordedCall, recorded_calls
from caduceus_audit.replay import ReplayReport, replay
from caduceus_audit.retention import RetentionError, archive_before, verify_archive
from caduceus_audit.settings import AuditSettings
from caduceus_audit.timeline_html import render_html
from caduceus_audit.usage import DIMENSIONS as USAGE_DIMENSIONS
from caduceus_audit.usage import UsageReport, UsageRow, usage_report
from caduceus_audit.verify import HeldCheckpoint, MissingAuditKey, verify_trail
from caduceus_schema import SchemaTooNew

__all__ = [
    "USAGE_DIMENSIONS", "UsageReport", "UsageRow", "usage_report",
    "ROUTES", "AuditSettings", "AppendOutcome", "AuditRecord", "AuditStore", "CallStory", "ChainVerdict",
    "CheckpointSourceError", "DeliveryError", "Export", "Formatter", "HeldCheckpoint", "LineSink", "MissingAuditKey",
    "Moment", "Narrator", "OtlpSink", "RecordFilter", "RecordedCall", "ReplayReport", "RetentionError", "SchemaTooNew",
    "Sink", "StoreRefused", "StoreUnavailable", "SyslogSink", "Timeline", "archive_before", "build_timeline",
    "read_bus_checkpoints", "read_checkpoint_file", "recorded_calls", "render_html", "replay", "sqlite_path",
    "verify_archive", "verify_trail", "write_checkpoint_file",
]
