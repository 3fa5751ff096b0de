"""Audit: every bus event stored once, redacted, in per-tenant hash chains in SQL."""

from caduceus_audit.adapters.store import (
    AppendOutcome,
    AuditRecord,
    AuditStore,
    StoreRefused,
    StoreUnavailable,
)
from caduceus_audit.handlers import ROUTES
from caduceus_audit.recorded import RecordedCall, recorded_calls
from caduceus_schema import SchemaTooNew

__all__ = ["ROUTES", "AppendOutcome", "AuditRecord", "AuditStore", "RecordedCall", "SchemaTooNew", "StoreRefused",
           "StoreUnavailable", "recorded_calls"]
