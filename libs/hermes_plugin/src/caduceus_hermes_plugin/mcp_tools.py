"""MCP tools offered to the planner: listed by the MCP gateway for this turn's person, never connected to here.

Each turn asks the gateway (`caduceus.mcp.tools.<tenant>.<workspace>`, with the turn's signed grant) which
`mcp__<server>__<tool>` tools its person may list, and registers each in Hermes's tool registry as a toolset of
its own, so that turn's agent enables exactly those. Calling one goes through the governed middleware like any
tool; the registered handler only answers if something bypassed it. No answer from the gateway: no MCP tools.

A tool withheld because its definition changed since it was approved is offered with a description of ours
(never the server's new one, which may carry instructions to the agent) saying it is withheld: a call of it is
decided like any call, policy denies it, and the agent can tell the person why.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from caduceus_contracts import McpToolsAnswer, McpToolsQuery, McpToolView, SignedGrant, subjects

log = logging.getLogger(__name__)
TOOLSET_PREFIX = "caduceus-mcp:"
WITHHELD = ("Withheld by the Caduceus MCP gateway: this tool's definition changed since it was approved, so its "
            "calls are denied until an approver approves the new definition.")


async def fetch_mcp_tools(nc: Any, grant: SignedGrant, timeout_s: float = 10.0) -> tuple[McpToolView, ...]:
    """The MCP tools this grant's person may list, or none when the gateway does not answer in time."""
    query = McpToolsQuery(grant=grant)
    try:
        reply = await nc.request(subjects.mcp_tools(grant.grant.tenant, grant.grant.workspace),
                                 query.model_dump_json().encode(), timeout=timeout_s)
        answer = McpToolsAnswer.model_validate_json(reply.data)
    except Exception as exc:
        log.warning("no MCP tools this turn: the MCP gateway did not answer (%s)", type(exc).__name__)
        return ()
    for problem in answer.problems:
        log.warning("MCP gateway: %s", problem)
    withheld = tuple(McpToolView(name=name, description=WITHHELD, input_schema={"type": "object"})
                     for name in answer.withheld)
    return answer.tools + withheld


def _not_here(args: Any = None, **_: Any) -> str:
    return json.dumps({"error": "MCP tools run at the Caduceus MCP gateway after a decision; nothing ran here",
                       "status": "refused"})


def offer_mcp_tools(tools: tuple[McpToolView, ...]) -> list[str]:
    """Register the tools in Hermes's registry; returns the toolsets one turn's agent enables to see them."""
    from tools.registry import registry

    toolsets = []
    for tool in tools:
        toolset = f"{TOOLSET_PREFIX}{tool.name}"
        parameters = tool.input_schema or {"type": "object", "properties": {}}
        schema = {"name": tool.name, "description": tool.description or f"MCP tool {tool.name}",
                  "parameters": parameters}
        registry.register(name=tool.name, toolset=toolset, schema=schema, handler=_not_here,
                          description=schema["description"])
        toolsets.append(toolset)
    return toolsets
