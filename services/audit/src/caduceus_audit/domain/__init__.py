"""The audit domain: what a message becomes when stored (secrets removed by caduceus_redaction), how chains are checked."""

from caduceus_audit.domain.chain import GENESIS_HASH, link_hash, record_hash
from caduceus_audit.domain.entries import AuditEntry, entry_for_message
from caduceus_audit.domain.verification import Anchor, ChainVerdict, verify_links
from caduceus_redaction import redact_event_body, redact_text, redact_value

__all__ = [
    "GENESIS_HASH", "Anchor", "AuditEntry", "ChainVerdict", "entry_for_message", "link_hash", "record_hash",
    "redact_event_body", "redact_text", "redact_value", "verify_links",
]
