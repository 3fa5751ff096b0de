"""Span and attribute names for tool calls and their decisions, from the published OpenTelemetry GenAI conventions.

A governed tool call is an `execute_tool {tool}` span (`gen_ai.operation.name` = `execute_tool`, with the tool's name,
call id, type, arguments and result). Each decision on it, policy's and then approval's, is a
`gen_ai.evaluation.result` event on that span: who decided as `gen_ai.evaluation.name` (`caduceus-policy`,
`caduceus-approval`), the verdict as `gen_ai.evaluation.score.label`, the reason as `gen_ai.evaluation.explanation`,
and the policies that matched and their pack version as `security_rule.name` and `security_rule.version`.

The conventions define `gen_ai.evaluation.result` as a log-record event; Caduceus records it as a span event of the
same name and attributes, so decisions travel with the traces they belong to. The guardrail span drafts
(`apply_guardrail`, `gen_ai.guardian.*`, `gen_ai.security.*`) were closed without being merged: nothing here uses
them. Names come from `opentelemetry-semantic-conventions` where it has a constant.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from opentelemetry.semconv._incubating.attributes.enduser_attributes import ENDUSER_ID
from opentelemetry.semconv._incubating.attributes.gen_ai_attributes import (
    GEN_AI_CONVERSATION_ID,
    GEN_AI_EVALUATION_EXPLANATION,
    GEN_AI_EVALUATION_NAME,
    GEN_AI_EVALUATION_SCORE_LABEL,
    GEN_AI_OPERATION_NAME,
    GEN_AI_TOOL_CALL_ARGUMENTS,
    GEN_AI_TOOL_CALL_ID,
    GEN_AI_TOOL_CALL_RESULT,
    GEN_AI_TOOL_NAME,
    GEN_AI_TOOL_TYPE,
)
from opentelemetry.semconv._incubating.attributes.security_rule_attributes import (
    SECURITY_RULE_NAME,
    SECURITY_RULE_VERSION,
)
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE

__all__ = [
    "ENDUSER_ID", "ERROR_TYPE", "EVALUATION_RESULT", "EXECUTE_TOOL", "GEN_AI_CONVERSATION_ID", "GEN_AI_OPERATION_NAME",
    "GEN_AI_TOOL_CALL_ARGUMENTS", "GEN_AI_TOOL_CALL_ID", "GEN_AI_TOOL_CALL_RESULT", "GEN_AI_TOOL_NAME",
    "GEN_AI_TOOL_TYPE", "decision_event", "execute_tool_attributes", "execute_tool_span_name",
]

# The value of GenAiOperationNameValues.EXECUTE_TOOL (the enum is marked deprecated, having moved repositories;
# the value is current).
EXECUTE_TOOL = "execute_tool"
# The event's name in the conventions (the package has no constant for event names).
EVALUATION_RESULT = "gen_ai.evaluation.result"


def execute_tool_span_name(tool: str) -> str:
    return f"{EXECUTE_TOOL} {tool}"


def execute_tool_attributes(tool: str, call_id: str | None = None) -> dict[str, Any]:
    """The attributes an `execute_tool` span starts with (Hermes tools are functions the model calls)."""
    attributes: dict[str, Any] = {GEN_AI_OPERATION_NAME: EXECUTE_TOOL, GEN_AI_TOOL_NAME: tool,
                                  GEN_AI_TOOL_TYPE: "function"}
    if call_id:
        attributes[GEN_AI_TOOL_CALL_ID] = call_id
    return attributes


def decision_event(decided_by: str, verdict: str, reason: str, policy_ids: Iterable[str] = (),
                   pack_version: str = "") -> dict[str, Any]:
    """The attributes of the `gen_ai.evaluation.result` event that records one decision on a tool call."""
    attributes: dict[str, Any] = {GEN_AI_EVALUATION_NAME: f"caduceus-{decided_by}",
                                  GEN_AI_EVALUATION_SCORE_LABEL: verdict, GEN_AI_EVALUATION_EXPLANATION: reason}
    rules = ",".join(policy_ids)
    if rules:
        attributes[SECURITY_RULE_NAME] = rules
    if pack_version:
        attributes[SECURITY_RULE_VERSION] = pack_version
    return attributes
