"""Every message the MCP gateway handles.

Routed (the table below): decided `mcp__<server>__<tool>` calls the broker dispatches here, never to an
executor; each is verified and run upstream (gateway.py) and its outcome published as `tool.completed`, like
any tool's. Requests (core NATS, answered, not stored; see `REQUESTS`): a planner's tool list
(`caduceus.mcp.tools.<tenant>.<workspace>`) and policy's facts about one tool (`caduceus.mcp.facts.<tenant>`).
"""

from __future__ import annotations

import logging
import time

from nats.aio.msg import Msg
from prometheus_client import Counter, Histogram
from pydantic import ValidationError

from caduceus_bus import Route, RouteTable, call_claim_subjects, kv_bucket_subjects
from caduceus_contracts import (
    GrantExpired,
    Keyring,
    McpFactsQuery,
    McpToolFacts,
    McpToolsAnswer,
    McpToolsQuery,
    SignatureError,
    ToolCallDispatched,
    subjects,
)
from caduceus_mcp.gateway import McpGateway
from caduceus_mcp.shared_calls import CALLS_BUCKET

log = logging.getLogger(__name__)

CALLS = Counter("caduceus_mcp_calls_total", "MCP calls the gateway answered, by outcome", ["status"])
CALL_SECONDS = Histogram("caduceus_mcp_call_seconds", "Time from a dispatched MCP call to its outcome "
                         "(verification, definition check, upstream)", buckets=(.005, .01, .025, .05, .1, .25, .5,
                                                                                 1, 2.5, 5, 10, 30))


async def run_call(gateway: McpGateway, event: ToolCallDispatched) -> None:
    """Verify and run one dispatched MCP call; publish its outcome for the planner (and the audit trail)."""
    started = time.perf_counter()
    completed = await gateway.call(event)
    CALLS.labels(completed.status).inc()
    CALL_SECONDS.observe(time.perf_counter() - started)
    log.info("MCP call %s (%s) in %s/%s: %s %s", event.call_id, event.tool, event.tenant, event.workspace,
             completed.status, completed.reason)
    await gateway.publish(subjects.tool_completed(event.tenant, event.workspace), completed)


async def answer_tools(gateway: McpGateway, identity: Keyring, msg: Msg) -> None:
    """A planner's tool list: only for a valid grant of the subject's tenant and workspace."""
    try:
        query = McpToolsQuery.model_validate_json(msg.data)
        grant = query.grant.verify(identity, issuers={"identity"})
        _, _, _, tenant, workspace = msg.subject.split(".")
        if (grant.tenant, grant.workspace) != (tenant, workspace):
            answer = McpToolsAnswer(problems=(f"the grant is for {grant.tenant}/{grant.workspace}, not "
                                              f"{tenant}/{workspace}",))
        else:
            answer = await gateway.tools_for(grant, query.grant)
    except (ValidationError, SignatureError, GrantExpired, ValueError) as exc:
        answer = McpToolsAnswer(problems=(f"not a valid tool-list request: {str(exc)[:300]}",))
    await _respond(msg, answer.model_dump_json().encode())


async def answer_facts(gateway: McpGateway, msg: Msg) -> None:
    """Policy's facts about one MCP tool (pin state `unknown` when it cannot be found or reached)."""
    try:
        query = McpFactsQuery.model_validate_json(msg.data)
        if msg.subject != subjects.mcp_facts(query.tenant):
            facts = McpToolFacts(pin="unknown")
        else:
            facts = await gateway.facts(query)
    except (ValidationError, ValueError):
        facts = McpToolFacts(pin="unknown")
    await _respond(msg, facts.model_dump_json().encode())


async def _respond(msg: Msg, data: bytes) -> None:
    try:
        await msg.respond(data)
    except Exception:
        log.exception("could not answer %s", msg.subject)


# Every routed message. Calls go to one replica each (a queue group); the outcome is a tool.completed event.
ROUTES = RouteTable(
    role="mcp",
    routes=(
        Route(subjects.MCP_DISPATCHED_ALL, ToolCallDispatched, run_call, queue="mcp", concurrency=16),
    ),
    publishes=(
        subjects.TOOL_COMPLETED_ALL,
        f"{subjects.PREFIX}.mcp.server.*",
        f"{subjects.PREFIX}.mcp.pin.*",
        f"{subjects.PREFIX}.mcp.definition.*",
        subjects.POLICY_REACHABLE_ALL,  # asks policy which tools a person could ever use (request/reply)
        # takes each call before it runs, and closes the endpoint's calls it stopped waiting for (claims.py)
        *call_claim_subjects(tenant="*", workspace="*"),
        *kv_bucket_subjects(CALLS_BUCKET),  # the endpoint's calls in progress, shared by its replicas
    ),
    # A replica taking up a call another replica of the endpoint asked reads back its decisions and outcome.
    reads_back=(subjects.TOOL_DECIDED_ALL, subjects.TOOL_COMPLETED_ALL),
    grants=("stream-setup",),
    # Requests answered by app.py (core NATS request/reply, outside the stored `cad.v1` events).
    extra_subscribes=(subjects.MCP_TOOLS_ALL, subjects.MCP_FACTS_ALL),
)
