"""What Caduceus needs to know about Hermes's tools."""

from __future__ import annotations

# Tools that act on the agent itself, not the workspace: decided by policy like
# any call, then run in the planner (Hermes's agent loop owns their state).
AGENT_LOOP_TOOLS = frozenset({"todo", "memory", "session_search", "delegate_task", "clarify"})


def runs_in_planner(tool: str) -> bool:
    return tool in AGENT_LOOP_TOOLS
