"""What one bus message becomes in the audit trail (pure): an `AuditEntry`, redacted and canonical.

A message that parses as a contract event is stored as that event. One that does
not (malformed, unknown kind, another tenant's subject) is stored too, as a
rejected entry saying why: the trail keeps what was attempted, not only what
was accepted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from caduceus_audit.domain.identity import event_record_id, rejected_record_id
from caduceus_contracts import (
    ApprovalView,
    CanonicalizationError,
    ContractError,
    Event,
    canonical_json,
    parse_event,
    subjects,
)
from caduceus_redaction import nothing_to_redact, redact_event_body, redact_text

MAX_EVENT_ID = 160
MAX_KIND = 64
MAX_SUBJECT = 512
MAX_REASON = 1000
# A rejected message is kept as an excerpt: enough to investigate, bounded so a flood cannot fill the store.
MAX_REJECTED_EXCERPT = 16_384
UNKNOWN_KIND = "unknown"
# W3C trace context: version-traceid-parentid-flags; an all-zero trace id is invalid.
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-(?!0{32})([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


@dataclass(frozen=True)
class AuditEntry:
    """One message ready to append to its chain, its tenant's or the system's (seq and hashes are the store's to
    assign)."""

    tenant: str
    event_id: str
    kind: str
    subject: str
    session_id: str | None
    call_id: str | None
    occurred_at: datetime
    body: str
    rejected: bool = False
    reject_reason: str | None = None
    trace_id: str | None = None

    def __post_init__(self) -> None:
        if not subjects.is_chain(self.tenant):
            raise ValueError(f"{self.tenant!r} names no chain: records belong to a tenant or {subjects.SYSTEM_TENANT}")

    def as_unstorable(self, reason: str) -> "AuditEntry":
        """This entry with its body withheld, for a message the store refused to hold as it was."""
        return replace(self, body=body_text({"withheld": reason[:MAX_REASON]}), rejected=True,
                       reject_reason=clean(f"the store refused this message: {reason}", MAX_REASON),
                       call_id=None, session_id=None)


def clean(text: str, limit: int | None = None) -> str:
    """Text any SQL engine stores as is: no NUL, no lone surrogates, at most `limit` characters."""
    text = text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    return text if limit is None else text[:limit]


# Integers RFC 8785 (I-JSON) can carry exactly.
_JCS_MAX_INT = 2**53 - 1


def _written_alike(value: Any) -> bool:
    """True for JSON that Python's own encoder writes exactly as RFC 8785 does: no floats (number formats
    differ), integers within 2**53, ASCII keys (sorted the same by code point and by UTF-16 unit)."""
    if value is None or isinstance(value, (str, bool)):
        return True
    if isinstance(value, int):
        return -_JCS_MAX_INT <= value <= _JCS_MAX_INT
    if isinstance(value, dict):
        return all(isinstance(key, str) and key.isascii() and _written_alike(item) for key, item in value.items())
    if isinstance(value, list):
        return all(_written_alike(item) for item in value)
    return False


def _c_encoded(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def body_text(value: Any) -> str:
    """The stored text of a body: RFC 8785 canonical JSON, or sorted compact JSON for what JCS refuses."""
    if _written_alike(value):
        # The C encoder instead of the general canonicalizer: the same bytes, many times faster (tests compare).
        text = _c_encoded(value)
        try:
            text.encode("utf-8")
            return text
        except UnicodeEncodeError:
            pass  # a lone surrogate: the general path below decides what is kept
    try:
        return canonical_json(value).decode("utf-8")
    except (CanonicalizationError, UnicodeDecodeError):
        # JCS refuses integers beyond 2**53 and non-finite numbers; the event still has to be kept.
        return clean(json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str))


def stored_body(kind: str | None, body: Any) -> str:
    """The text an event body is stored as: redacted (see `redaction`), then canonical JSON."""
    if _written_alike(body):
        text = _c_encoded(body)
        # Most bodies hold nothing that looks like a secret: one look at their whole text instead of a walk.
        if nothing_to_redact(text):
            return text
    return body_text(redact_event_body(kind, body))


def entry_for_message(subject: str, data: bytes, headers: Mapping[str, str] | None, *,
                      stream_seq: int, received_at: datetime) -> AuditEntry:
    """The audit entry for one message taken off the stream: the event it carries, or a rejection."""
    try:
        event = parse_event(data, subject=subject)
    except ContractError as exc:
        return rejected_entry(subject, data, headers, str(exc), stream_seq=stream_seq, received_at=received_at)
    return event_entry(subject, event, trace_id=trace_of(headers),
                       record_id=event_record_id(event.event_id, headers, stream_seq))


def trace_of(headers: Mapping[str, str] | None) -> str | None:
    """The OpenTelemetry trace id a message carried in its `traceparent` header, if a valid one."""
    match = _TRACEPARENT.match((headers or {}).get("traceparent", "").strip())
    return match.group(1) if match else None


def event_entry(subject: str, event: Event, *, trace_id: str | None = None, record_id: str | None = None) -> AuditEntry:
    """The entry for an event; `record_id` (see `identity`) is what it is stored under, its event id by default."""
    return AuditEntry(
        tenant=event.tenant,
        event_id=clean(record_id or event.event_id, MAX_EVENT_ID),
        kind=event.kind,
        subject=clean(subject, MAX_SUBJECT),
        session_id=session_of(event),
        call_id=_optional(getattr(event, "call_id", None), MAX_EVENT_ID),
        occurred_at=event.occurred_at,
        body=stored_body(event.kind, event.model_dump(mode="json")),
        trace_id=trace_id,
    )


def session_of(event: Event) -> str | None:
    """The chat session an event belongs to: its own, its grant's, its decision's, or its approval's."""
    session = getattr(event, "session_id", None)
    if session is None and isinstance(approval := getattr(event, "approval", None), ApprovalView):
        session = approval.session_id
    if session is None and (grant := getattr(event, "grant", None)) is not None:
        session = grant.grant.session_id
    if session is None and (decision := getattr(event, "decision", None)) is not None:
        session = decision.decision.session_id
    return session


def rejected_entry(subject: str, data: bytes, headers: Mapping[str, str] | None, reason: str, *,
                   stream_seq: int, received_at: datetime) -> AuditEntry:
    """A message that is no contract event, kept under its subject's tenant (or `_system`) with the reason."""
    claimed: Any = None
    try:
        claimed = json.loads(data)
    except (ValueError, RecursionError):
        pass
    kind = claimed.get("kind") if isinstance(claimed, dict) else None
    kind = clean(kind, MAX_KIND) if isinstance(kind, str) and kind else UNKNOWN_KIND
    body = _rejected_body(data, claimed, kind)
    return AuditEntry(
        tenant=subjects.tenant_of(subject) or subjects.SYSTEM_TENANT,
        event_id=clean(rejected_record_id(data, headers, subject, stream_seq), MAX_EVENT_ID),
        kind=kind,
        subject=clean(subject, MAX_SUBJECT),
        session_id=None,
        call_id=None,
        occurred_at=received_at,
        body=body,
        rejected=True,
        reject_reason=clean(redact_text(reason), MAX_REASON),
        trace_id=trace_of(headers),
    )


def _rejected_body(data: bytes, claimed: Any, kind: str) -> str:
    if claimed is not None and len(data) <= MAX_REJECTED_EXCERPT:
        try:
            return stored_body(kind, claimed)
        except RecursionError:
            pass  # nested too deep to walk: keep it as text instead
    excerpt = data[:MAX_REJECTED_EXCERPT].decode("utf-8", "replace")
    return body_text({"excerpt": redact_text(excerpt), "size": len(data)})


def _optional(value: Any, limit: int) -> str | None:
    return clean(value, limit) if isinstance(value, str) else None
