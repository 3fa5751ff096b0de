"""The audit domain: what a message becomes when stored, how secrets are removed, how chains are checked."""

from caduceus_audit.domain.chain import (
    GENESIS_HASH,
    ChainVerdict,
    record_hash,
    verify_links,
)
from caduceus_audit.domain.entries import AuditEntry, entry_for_message
from caduceus_audit.domain.redaction import redact_event_body, redact_text, redact_value

__all__ = [
    "GENESIS_HASH", "AuditEntry", "ChainVerdict", "entry_for_message", "record_hash", "redact_event_body",
    "redact_text", "redact_value", "verify_links",
]
