"""Syslog, RFC 5424: one message per record, key fields as structured data, the summary as the message.

Facility 13 (log audit). Structured-data values escape `"`, `\\` and `]`; the message
is UTF-8 and starts with a BOM, as RFC 5424 section 6.4 asks. Over TCP messages are
framed by octet counting (RFC 6587 section 3.4.1), so a line break inside one cannot
split it.
"""

from __future__ import annotations

from caduceus_audit.domain.narrative import RecordView

FACILITY_LOG_AUDIT = 13
SYSLOG_SEVERITY = {"info": 6, "warning": 4, "high": 3}  # informational, warning, error
APP_NAME = "caduceus-audit"
# 32473 is the private enterprise number RFC 5612 reserves for documentation; SIEM rules match the SD-ID.
SD_ID = "caduceus@32473"
BOM = "\ufeff"
MAX_HOSTNAME = 255


def sd_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _printable_ascii(value: str, limit: int) -> str:
    text = "".join(ch for ch in value if 33 <= ord(ch) <= 126)[:limit]
    return text or "-"


def to_syslog(view: RecordView, hostname: str) -> str:
    """The RFC 5424 message for one record (without transport framing)."""
    record, decision = view.record, view.decision
    pri = FACILITY_LOG_AUDIT * 8 + SYSLOG_SEVERITY[view.severity]
    timestamp = record.occurred_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    params = [("tenant", record.tenant), ("seq", str(record.seq)), ("event", record.event_id), ("kind", record.kind),
              ("session", record.session_id), ("call", record.call_id), ("trace", record.trace_id),
              ("user", view.actor.user if view.actor else None),
              ("tool", view.call.tool if view.call else None),
              ("verdict", decision.verdict if decision else None),
              ("decided_by", decision.decided_by if decision else None),
              ("policy", ",".join(decision.policy_ids) if decision and decision.policy_ids else None),
              ("status", view.status), ("rejected", "true" if record.rejected else None)]
    data = " ".join(f'{name}="{sd_value(value)}"' for name, value in params if value)
    return (f"<{pri}>1 {timestamp} {_printable_ascii(hostname, MAX_HOSTNAME)} {APP_NAME} - "
            f"{_printable_ascii(record.kind, 32)} [{SD_ID} {data}] {BOM}{view.summary}")


def octet_counted(message: str) -> bytes:
    """A message framed for syslog over TCP: its length in bytes, a space, the message."""
    payload = message.encode("utf-8")
    return str(len(payload)).encode() + b" " + payload
