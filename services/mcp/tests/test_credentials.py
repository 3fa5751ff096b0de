"""A hostile upstream that knows its credential and tries to hand it back through every channel it has: its tool
results, its error results, a protocol error, and its tool definitions (which policy shows approvers, the audit
keeps and the planner lists). The gateway must never pass the value on (issue 14 item 5)."""

from __future__ import annotations

import pytest

from caduceus_contracts import McpFactsQuery

from .conftest import TOKEN, dispatched, grant

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]


async def test_a_protocol_error_naming_the_credential_is_an_error_result_without_it(gateway, keys) -> None:
    facts = await gateway.facts(McpFactsQuery(tenant="acme", workspace="default", tool="mcp__files__refuse"))
    done = await gateway.call(dispatched(keys, "mcp__files__refuse", {}, signer=keys.approval,
                                         definition_digest=facts.digest))
    assert done.status == "error" and "upstream refused token [REDACTED:credential]" in done.reason, done
    assert TOKEN not in done.model_dump_json()


async def test_a_definition_naming_the_credential_is_listed_shown_and_pinned_without_it(gateway, keys) -> None:
    listed = await gateway.tools_for(grant(keys).grant)
    confide = next(t for t in listed.tools if t.name == "mcp__files__confide")
    assert confide.description.startswith("Configured with token [REDACTED:credential]")
    assert TOKEN not in listed.model_dump_json()
    facts = await gateway.facts(McpFactsQuery(tenant="acme", workspace="default", tool="mcp__files__confide"))
    assert TOKEN not in facts.model_dump_json()  # what policy shows the approver
    done = await gateway.call(dispatched(keys, "mcp__files__confide", {}, signer=keys.approval,
                                         definition_digest=facts.digest))
    assert (done.status, done.result) == ("ok", "nothing more to say")  # the pin is of the definition as shown
    assert [p.tool for p in gateway.pins.list("acme")] == ["confide"]
    assert TOKEN not in str(gateway.pins.list("acme")[0].definition)
    assert all(TOKEN not in event.model_dump_json() for _, event in gateway.published)


async def test_the_problems_a_planner_is_told_never_carry_a_credential(gateway, keys, tmp_path) -> None:
    from .conftest import write_registry
    # A server that cannot start, told why: its error message would name the command line, never the environment.
    write_registry(gateway.registry.path, "      broken:\n        command: [/nonexistent/" + TOKEN + "]\n"
                   "        credentials: {env: {MCP_TEST_TOKEN: upstream-token}}\n")
    listed = await gateway.tools_for(grant(keys).grant)
    assert listed.tools == () and listed.problems and TOKEN not in listed.model_dump_json()
