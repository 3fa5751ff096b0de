"""Upstream outages (issue 14 item 6): a server that crashes in the middle of a call, or that is gone, gives the
agent an error result at once; nothing hangs and nothing runs unchecked. Real SDK servers (stdio, HTTP)."""

from __future__ import annotations

import time

import pytest

from caduceus_contracts import McpFactsQuery

from .conftest import dispatched, grant

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]


async def test_a_server_that_crashes_mid_call_is_an_error_result_not_a_hang(gateway, keys) -> None:
    facts = await gateway.facts(McpFactsQuery(tenant="acme", workspace="default", tool="mcp__files__die"))
    started = time.monotonic()
    done = await gateway.call(dispatched(keys, "mcp__files__die", {}, signer=keys.approval,
                                         definition_digest=facts.digest))
    assert done.status == "error" and done.reason.startswith("MCP server files:"), done
    assert time.monotonic() - started < 3 + 20  # well within the server's 3 s call bound plus its start


async def test_an_http_server_gone_after_approval_is_unlisted_unvouched_and_its_call_errors(
        gateway, keys, http_upstream, http_process) -> None:
    from .test_egress import register
    register(gateway, http_upstream)
    facts = await gateway.facts(McpFactsQuery(tenant="acme", workspace="default", tool="mcp__web__echo"))
    first = await gateway.call(dispatched(keys, "mcp__web__echo", {"text": "up"}, signer=keys.approval,
                                          definition_digest=facts.digest))
    assert (first.status, first.result) == ("ok", "up")
    http_process.terminate()
    http_process.wait(10)
    done = await gateway.call(dispatched(keys, "mcp__web__echo", {"text": "down"}))  # pinned, allowed by policy
    assert done.status == "error" and "cannot be reached" in done.reason and done.result == ""
    # The next listing fails: nothing is listed or vouched for from memory any more.
    assert await gateway.refresh_listings() == 1
    listed = await gateway.tools_for(grant(keys).grant)
    assert listed.tools == () and "web:" in listed.problems[0]
    gone = await gateway.facts(McpFactsQuery(tenant="acme", workspace="default", tool="mcp__web__echo"))
    assert gone.pin == "unknown"  # policy denies: the gateway cannot vouch for it
