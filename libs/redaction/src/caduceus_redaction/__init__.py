"""Secrets removed before anything is stored (audit), exported or shown (the approvals UI): DESIGN.md invariant 7."""

from caduceus_redaction.rules import (
    TOKEN_PLACEHOLDER,
    nothing_to_redact,
    placeholder,
    redact_event_body,
    redact_text,
    redact_value,
    secret_spans,
)

__all__ = ["TOKEN_PLACEHOLDER", "nothing_to_redact", "placeholder", "redact_event_body", "redact_text", "redact_value",
           "secret_spans"]
