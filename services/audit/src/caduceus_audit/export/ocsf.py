"""OCSF 1.8.0: every record as an API Activity event (class 6003), with the AI operation and security control
profiles: the actor from the session grant, the tool as the API operation, the decision as an authorization
with its policy, the tenant in metadata, the trace id when the record carried one."""

from __future__ import annotations

from typing import Any

from caduceus_audit.domain.narrative import RecordView
from caduceus_audit.export import product_version

OCSF_VERSION = "1.8.0"
API_ACTIVITY = 6003
APPLICATION_CATEGORY = 6
OTHER = 99
PROFILES = ["ai_operation", "security_control", "trace"]
SEVERITY_ID = {"info": 1, "warning": 3, "high": 4}
SEVERITY = {1: "Informational", 3: "Medium", 4: "High"}
# Who publishes each kind of event: the source of the API activity.
PUBLISHER = {"chat.message.in": "chat", "turn.requested": "identity", "turn.assigned": "broker",
             "tool.requested": "planner", "tool.decided": "policy", "tool.dispatched": "broker",
             "tool.completed": "planner", "chat.reply": "planner", "worker.lifecycle": "broker", "error": "caduceus",
             "model.requested": "inference", "model.decided": "policy", "model.completed": "inference",
             "model.usage": "inference", "turn.stopped": "policy", "mcp.server.changed": "mcp",
             "mcp.pin.changed": "mcp", "mcp.definition.changed": "mcp"}
# OCSF message_context.ai_role_id: who speaks in the conversation.
AI_ROLE = {"chat.message.in": (1, "User"), "turn.requested": (1, "User"), "chat.reply": (2, "Assistant"),
           "model.usage": (2, "Assistant"), "model.requested": (1, "User"), "model.decided": (2, "Assistant"),
           "model.completed": (2, "Assistant")}
TOOL_ROLE = (3, "Tool")
# security_control action_id and disposition_id per verdict (an approval's allow is "Approved").
ACTION = {"allow": (1, "Allowed"), "deny": (2, "Denied"), "approve": (OTHER, "Held for approval")}
DISPOSITION = {"allow": (1, "Allowed"), "deny": (2, "Blocked"), "approve": (14, "Delayed")}
APPROVED = (8, "Approved")


PRODUCT = {"name": "Caduceus", "vendor_name": "Caduceus", "uid": "caduceus-audit", "version": product_version()}


def _ms(moment: Any) -> int:
    return int(moment.timestamp() * 1000)


def to_ocsf(view: RecordView) -> dict[str, Any]:
    """The OCSF API Activity event for one record."""
    record = view.record
    severity_id = SEVERITY_ID[view.severity]
    event: dict[str, Any] = {
        "class_uid": API_ACTIVITY, "class_name": "API Activity",
        "category_uid": APPLICATION_CATEGORY, "category_name": "Application Activity",
        "activity_id": OTHER, "activity_name": record.kind, "type_uid": API_ACTIVITY * 100 + OTHER,
        "type_name": "API Activity: Other",
        "severity_id": severity_id, "severity": SEVERITY[severity_id],
        "time": _ms(record.occurred_at), "timezone_offset": 0,
        "message": view.summary,
        "metadata": _metadata(view),
        "actor": _actor(view),
        "api": _api(view),
        "src_endpoint": {"name": PUBLISHER.get(record.kind, "caduceus"), "svc_name": record.subject},
        "raw_data": record.body,
        "unmapped": {"caduceus": _unmapped(view)},
    }
    if record.trace_id:
        event["trace"] = {"uid": record.trace_id}
    if view.workspace:
        event["resources"] = [{"name": view.workspace, "type": "workspace", "uid": f"{record.tenant}/{view.workspace}"}]
    if record.session_id:
        role_id, role = AI_ROLE.get(record.kind, TOOL_ROLE if record.kind.startswith("tool.") else (OTHER, "Other"))
        event["message_context"] = {"uid": record.session_id, "name": "caduceus session", "ai_role_id": role_id,
                                    "ai_role": role, **_token_counts(view)}
    event.update(_outcome(view))
    return event


def _token_counts(view: RecordView) -> dict[str, int]:
    if view.kind != "model.usage" or not view.body:
        return {}
    prompt, completion = int(view.body.get("prompt_tokens") or 0), int(view.body.get("completion_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _metadata(view: RecordView) -> dict[str, Any]:
    record = view.record
    return {
        "version": OCSF_VERSION, "product": PRODUCT, "profiles": PROFILES, "uid": record.event_id,
        "tenant_uid": record.tenant, "log_name": "caduceus-audit", "sequence": record.seq,
        "correlation_uid": record.call_id or record.session_id or record.event_id,
        "logged_time": _ms(record.recorded_at), "original_time": record.occurred_at.isoformat(),
        "labels": [record.kind],
    }


def _actor(view: RecordView) -> dict[str, Any]:
    actor: dict[str, Any] = {"app_name": "hermes-agent" if view.actor else f"caduceus-{PUBLISHER.get(view.kind, 'audit')}"}
    if view.actor is not None:
        actor["user"] = {"name": view.actor.user, "uid": f"{view.actor.user}@{view.tenant}", "type_id": 1,
                         "type": "User", "groups": [{"name": role} for role in view.actor.roles]}
    if view.record.session_id:
        actor["session"] = {"uid": view.record.session_id, "issuer": "caduceus-identity"}
    return actor


def _api(view: RecordView) -> dict[str, Any]:
    record = view.record
    api: dict[str, Any] = {"operation": view.call.tool if view.call else record.kind,
                           "service": {"name": "caduceus", "uid": record.subject},
                           "request": {"uid": record.call_id or record.event_id}}
    if view.status is not None:
        api["response"] = {"message": view.status}
        if view.status not in ("ok",) and view.body:
            api["response"]["error"] = str(view.body.get("reason") or view.status)
    elif view.decision is not None:
        api["response"] = {"message": view.decision.verdict}
    return api


def _outcome(view: RecordView) -> dict[str, Any]:
    record, decision = view.record, view.decision
    if record.rejected:
        return {"status_id": 2, "status": "Failure", "status_detail": record.reject_reason or "rejected"}
    if decision is not None:
        action_id, action = ACTION.get(decision.verdict, (0, "Unknown"))
        disposition_id, disposition = DISPOSITION.get(decision.verdict, (0, "Unknown"))
        if decision.decided_by == "approval" and decision.verdict == "allow":
            disposition_id, disposition = APPROVED
        policy = {"name": ", ".join(decision.policy_ids) or f"caduceus {decision.decided_by}",
                  "uid": decision.policy_ids[0] if decision.policy_ids else decision.decided_by,
                  "version": decision.pack_version or None, "desc": decision.reason, "is_applied": True}
        if decision.approver_group:
            policy["group"] = {"name": decision.approver_group}
        policy = {key: value for key, value in policy.items() if value is not None}
        return {"action_id": action_id, "action": action, "disposition_id": disposition_id,
                "disposition": disposition, "policy": policy, "status_detail": decision.reason,
                "authorizations": [{"decision": decision.verdict, "policy": policy}]}
    if view.status is not None:
        ok = view.status == "ok"
        detail = {"status_detail": str(view.body.get("reason"))} if view.body and view.body.get("reason") else {}
        outcome = {"status_id": 1 if ok else 2, "status": "Success" if ok else "Failure", "status_code": view.status,
                   **detail}
        if view.status in ("denied", "refused"):
            outcome.update(action_id=2, action="Denied")
        return outcome
    return {}


def _unmapped(view: RecordView) -> dict[str, Any]:
    record = view.record
    details: dict[str, Any] = {"kind": record.kind, "subject": record.subject, "seq": record.seq,
                               "hash": record.hash, "prev_hash": record.prev_hash}
    if view.call is not None:
        details.update(tool=view.call.tool, args=view.call.args, digest=view.call.digest)
    if record.kind.startswith("mcp.") and view.body:
        # The gateway's registry, pin and definition events, field by field (credential names, never values).
        details["mcp"] = {k: v for k, v in view.body.items() if k not in ("tenant", "kind", "event_id", "occurred_at",
                                                                        "schema_version")}
    return details
