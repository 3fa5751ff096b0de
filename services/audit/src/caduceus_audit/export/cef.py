"""ArcSight CEF: one line per record, header and extension escaped so no value can forge a field.

Header fields escape `\\` and `|` (and cannot hold line breaks: those become spaces);
extension values escape `\\`, `=` and line breaks (`\\n`, `\\r`), as the CEF specification
says, so a tool argument like `a|b=c\\nact=allow` stays one value of one field.
"""

from __future__ import annotations

import json

from caduceus_audit.domain.narrative import RecordView
from caduceus_audit.export import product_version

CEF_SEVERITY = {"info": 3, "warning": 6, "high": 8}
MAX_NAME = 512


def header_field(value: str) -> str:
    return " ".join(value.replace("\\", "\\\\").replace("|", "\\|").splitlines())


def extension_value(value: str) -> str:
    return (value.replace("\\", "\\\\").replace("=", "\\=")
            .replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r"))


def to_cef(view: RecordView) -> str:
    """The CEF line for one record."""
    record, decision = view.record, view.decision
    event_class = record.kind + (f".{decision.verdict}" if decision else "") + (".rejected" if record.rejected else "")
    extension: list[tuple[str, str | int | None]] = [
        ("rt", int(record.occurred_at.timestamp() * 1000)),
        ("externalId", record.event_id),
        ("cat", record.kind),
        ("suser", view.actor.user if view.actor else None),
        ("spriv", ",".join(view.actor.roles) if view.actor else None),
        ("act", decision.verdict if decision else view.status),
        ("reason", decision.reason if decision else record.reject_reason),
        ("outcome", "failure" if record.rejected or view.severity != "info" else "success"),
        ("msg", view.summary),
        ("cs1Label", "tenant"), ("cs1", record.tenant),
        ("cs2Label", "session"), ("cs2", record.session_id),
        ("cs3Label", "callId"), ("cs3", record.call_id),
        ("cs4Label", "tool"), ("cs4", view.call.tool if view.call else None),
        ("cs5Label", "policyIds"), ("cs5", ",".join(decision.policy_ids) if decision else None),
        ("cs6Label", "traceId"), ("cs6", record.trace_id),
        ("cn1Label", "seq"), ("cn1", record.seq),
        ("flexString1Label", "args"),
        ("flexString1", json.dumps(view.call.args, ensure_ascii=False, sort_keys=True) if view.call else None),
        ("flexString2Label", "decidedBy"), ("flexString2", decision.decided_by if decision else None),
    ]
    present = [(key, value) for key, value in extension if value not in (None, "")]
    # A label without its value says nothing: drop labels whose field is empty.
    keys = {key for key, _ in present}
    present = [(key, value) for key, value in present
               if not key.endswith("Label") or key.removesuffix("Label") in keys]
    text = " ".join(f"{key}={extension_value(str(value))}" for key, value in present)
    name = header_field(view.summary)[:MAX_NAME]
    return (f"CEF:0|Caduceus|Caduceus Audit|{header_field(product_version())}|{header_field(event_class)}|{name}|"
            f"{CEF_SEVERITY[view.severity]}|{text}")
