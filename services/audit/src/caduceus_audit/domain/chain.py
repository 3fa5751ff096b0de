"""The per-tenant hash chain (pure): what a record's hash covers and how it is computed.

Each record's hash covers every stored field of it: its place (tenant, seq), its
identity (event_id, kind, subject, session, call, trace), its times, its body, whether
it was rejected and why, and the previous record's hash. So editing, deleting,
inserting or reordering records breaks the chain at the first record touched;
`verification` says which and how.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import Protocol

GENESIS_HASH = "0" * 64

# The chained fields in RFC 8785 order (keys sorted by UTF-16 code units; all ASCII here).
CHAINED_FIELDS = tuple(sorted((
    "tenant", "seq", "event_id", "kind", "subject", "session_id", "call_id", "trace_id", "occurred_at",
    "recorded_at", "body", "rejected", "reject_reason", "prev_hash",
)))

# JSON text of a string exactly as RFC 8785 writes it: the same escapes as ECMAScript's JSON.stringify
# (\b \t \n \f \r, \u00xx in lower case for other controls, nothing else), UTF-8 left as is.
_json_string = encode_basestring


def as_utc(moment: datetime) -> datetime:
    """A timestamp in UTC; a naive one is taken to be UTC already (as the store reads it back)."""
    if moment.tzinfo is UTC:
        return moment
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def timestamp_text(moment: datetime) -> str:
    """The one text form of a timestamp inside a record's hash: UTC, microseconds, `+00:00` (naive means UTC)."""
    if moment.tzinfo is None:
        return moment.isoformat(timespec="microseconds") + "+00:00"
    return as_utc(moment).isoformat(timespec="microseconds")


def _optional(text: str | None) -> str:
    return "null" if text is None else _json_string(text)


def _hash(tenant: str, seq: int, event_id: str, kind: str, subject: str, session_id: str | None, call_id: str | None,
          trace_id: str | None, occurred_at: datetime, recorded_at: datetime, body: str, rejected: bool,
          reject_reason: str | None, prev_hash: str) -> str:
    # Written out by hand rather than through a general canonicalizer: verification hashes millions of
    # records, and this is several times faster (tests check it byte for byte against `canonical_json`).
    text = (
        f'{{"body":{_json_string(body)},"call_id":{_optional(call_id)},"event_id":{_json_string(event_id)},'
        f'"kind":{_json_string(kind)},"occurred_at":"{timestamp_text(occurred_at)}",'
        f'"prev_hash":{_json_string(prev_hash)},"recorded_at":"{timestamp_text(recorded_at)}",'
        f'"reject_reason":{_optional(reject_reason)},"rejected":{"true" if rejected else "false"},'
        f'"seq":{int(seq)},"session_id":{_optional(session_id)},"subject":{_json_string(subject)},'
        f'"tenant":{_json_string(tenant)},"trace_id":{_optional(trace_id)}}}'
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def record_hash(*, tenant: str, seq: int, event_id: str, kind: str, subject: str, session_id: str | None,
                call_id: str | None, trace_id: str | None, occurred_at: datetime, recorded_at: datetime, body: str,
                rejected: bool, reject_reason: str | None, prev_hash: str) -> str:
    """SHA-256 (hex) over the RFC 8785 canonical JSON of one record's chained fields."""
    return _hash(tenant, seq, event_id, kind, subject, session_id, call_id, trace_id, occurred_at, recorded_at, body,
                 rejected, reject_reason, prev_hash)


class ChainLink(Protocol):
    """A stored record as the chain sees it (an AuditRecord row, or a row read for verification)."""

    tenant: str
    seq: int
    event_id: str
    kind: str
    subject: str
    session_id: str | None
    call_id: str | None
    trace_id: str | None
    occurred_at: datetime
    recorded_at: datetime
    body: str
    rejected: bool
    reject_reason: str | None
    prev_hash: str
    hash: str


_TEXT = ("tenant", "event_id", "kind", "subject", "body", "prev_hash", "hash")
_OPTIONAL_TEXT = ("session_id", "call_id", "trace_id", "reject_reason")


def malformed_column(link: ChainLink) -> str | None:
    """The first column of a stored record holding what no appended record can (SQLite keeps any value in any
    column), or None: such a record was written by hand, and its hash cannot even be computed."""
    if not isinstance(link.seq, int) or isinstance(link.seq, bool):
        return "seq"
    for name in _TEXT:
        if not isinstance(getattr(link, name), str):
            return name
    for name in _OPTIONAL_TEXT:
        if not isinstance(getattr(link, name), (str, type(None))):
            return name
    for name in ("occurred_at", "recorded_at"):
        if not isinstance(getattr(link, name), datetime):
            return name
    return None if isinstance(link.rejected, (bool, int)) else "rejected"


def link_hash(link: ChainLink, *, seq: int | None = None) -> str:
    """The hash a stored record should carry (at `seq` instead of its own, to test where it came from)."""
    return _hash(link.tenant, link.seq if seq is None else seq, link.event_id, link.kind, link.subject,
                 link.session_id, link.call_id, link.trace_id, link.occurred_at, link.recorded_at, link.body,
                 link.rejected, link.reject_reason, link.prev_hash)
