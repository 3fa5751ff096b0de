"""JSON Lines: one record per line, every stored column and the body as JSON, for any log pipeline."""

from __future__ import annotations

import json
from typing import Any

from caduceus_audit.domain.narrative import RecordView


def jsonl_object(view: RecordView) -> dict[str, Any]:
    """The record as one JSON object: what was stored (chain fields included, so it can be re-verified)."""
    record = view.record
    return {
        "tenant": record.tenant, "seq": record.seq, "event_id": record.event_id, "kind": record.kind,
        "subject": record.subject, "session_id": record.session_id, "call_id": record.call_id,
        "trace_id": record.trace_id, "occurred_at": record.occurred_at.isoformat(),
        "recorded_at": record.recorded_at.isoformat(), "rejected": bool(record.rejected),
        "reject_reason": record.reject_reason, "summary": view.summary, "severity": view.severity,
        "body": view.body if view.body is not None else record.body,
        "prev_hash": record.prev_hash, "hash": record.hash,
    }


def to_jsonl(view: RecordView) -> str:
    return json.dumps(jsonl_object(view), ensure_ascii=False, separators=(",", ":"))
