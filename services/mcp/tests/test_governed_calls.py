"""A governed MCP call against real MCP servers (SDK, stdio and streamable HTTP): only with a signed decision
for the exact call, only once, only for an approved (pinned) definition, with credentials injected here alone."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from caduceus_contracts import McpDefinitionChanged, McpFactsQuery, McpPinChanged
from caduceus_mcp import McpGateway

from .conftest import TOKEN, Keys, dispatched, grant, stdio_server, write_registry

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]
ECHO = "mcp__files__echo"


async def approve_first_use(gateway: McpGateway, keys: Keys, tool: str, args: dict) -> object:
    """What the approval flow does: the approver saw the definition (its digest is in the decision's facts)."""
    facts = await gateway.facts(McpFactsQuery(tenant="acme", workspace="default", tool=tool))
    assert facts.pin == "unpinned"
    return await gateway.call(dispatched(keys, tool, args, signer=keys.approval, definition_digest=facts.digest))


async def test_a_tool_never_approved_is_not_called_on_policy_allow_alone(gateway, keys) -> None:
    done = await gateway.call(dispatched(keys, ECHO, {"text": "hi"}))
    assert done.status == "denied"
    assert "not been approved for first use" in done.reason


async def test_approval_pins_the_definition_and_the_next_call_runs_without_asking(gateway, keys) -> None:
    first = await approve_first_use(gateway, keys, ECHO, {"text": "hi"})
    assert (first.status, first.result) == ("ok", "hi")
    pins = gateway.pins.list("acme")
    assert [(p.server, p.tool, p.approved_by) for p in pins] == [("files", "echo", "carol")]
    assert any(isinstance(e, McpPinChanged) and e.action == "pinned" for _, e in gateway.published)
    second = await gateway.call(dispatched(keys, ECHO, {"text": "again"}))
    assert (second.status, second.result) == ("ok", "again")


async def test_approving_another_definition_than_the_one_served_pins_nothing(gateway, keys) -> None:
    done = await gateway.call(dispatched(keys, ECHO, {"text": "hi"}, signer=keys.approval,
                                         definition_digest="0" * 64))
    assert done.status == "denied"
    assert gateway.pins.list("acme") == []


async def test_a_changed_definition_is_withheld_denied_and_reported_with_the_diff(gateway, keys, tmp_path) -> None:
    await approve_first_use(gateway, keys, ECHO, {"text": "hi"})
    (tmp_path / "rug").touch()  # the server now serves another description for echo
    done = await gateway.call(dispatched(keys, ECHO, {"text": "hi"}))
    assert done.status == "denied"
    assert "changed since it was approved" in done.reason
    changes = [e for _, e in gateway.published if isinstance(e, McpDefinitionChanged)]
    assert len(changes) == 1 and "evil.example" in changes[0].diff
    listed = await gateway.tools_for(grant(keys).grant)
    assert ECHO not in {t.name for t in listed.tools}
    assert "mcp__files__add" in {t.name for t in listed.tools}


async def test_lists_and_facts_answer_from_the_listing_but_a_call_checks_what_is_served_then(
        gateway, keys, tmp_path) -> None:
    await approve_first_use(gateway, keys, ECHO, {"text": "hi"})
    assert (await gateway.refresh_listings()) == 0
    (tmp_path / "rug").touch()  # changed after the last listing: lists and facts do not know yet
    facts = await gateway.facts(McpFactsQuery(tenant="acme", workspace="default", tool=ECHO))
    assert facts.pin == "pinned"
    done = await gateway.call(dispatched(keys, ECHO, {"text": "hi"}))  # allowed on those stale facts
    assert done.status == "denied" and "changed since it was approved" in done.reason
    # The call's own listing is now what lists and facts answer from: withheld, denied, and named as withheld.
    facts = await gateway.facts(McpFactsQuery(tenant="acme", workspace="default", tool=ECHO))
    assert facts.pin == "changed"
    listed = await gateway.tools_for(grant(keys).grant)
    assert ECHO not in {t.name for t in listed.tools} and listed.withheld == (ECHO,)
    assert "evil.example" not in listed.model_dump_json()


async def test_a_server_that_stops_answering_is_forgotten_not_vouched_for_from_memory(gateway, keys, tmp_path) -> None:
    await approve_first_use(gateway, keys, ECHO, {"text": "hi"})
    write_registry(gateway.registry.path, stdio_server("files", tmp_path / "rug").replace(
        "command: [", "command: [/nonexistent/python, "))
    assert (await gateway.refresh_listings()) == 1
    facts = await gateway.facts(McpFactsQuery(tenant="acme", workspace="default", tool=ECHO))
    assert facts.pin == "unknown"  # policy denies: the gateway cannot vouch for it


async def test_an_idle_server_is_not_started_again_in_the_background_until_it_is_asked_for(
        gateway, keys, tmp_path) -> None:
    await approve_first_use(gateway, keys, ECHO, {"text": "hi"})
    gateway.idle_after_s = 0.5
    await asyncio.sleep(0.6)  # nobody asks for it any more
    (tmp_path / "rug").touch()
    await gateway.refresh_listings()  # idle: not started again
    facts = await gateway.facts(McpFactsQuery(tenant="acme", workspace="default", tool=ECHO))
    assert facts.pin == "pinned"  # from the last listing (a call would still be checked)
    await gateway.refresh_listings()  # asked for just now: listed again
    facts = await gateway.facts(McpFactsQuery(tenant="acme", workspace="default", tool=ECHO))
    assert facts.pin == "changed"


async def test_the_same_change_after_a_new_approval_is_reported_again(gateway, keys, tmp_path) -> None:
    rug = tmp_path / "rug"
    for _ in range(2):  # approve, rug pull, revoke and put the server back: the same change is news again
        await approve_first_use(gateway, keys, ECHO, {"text": "hi"})
        rug.touch()
        assert (await gateway.call(dispatched(keys, ECHO, {"text": "hi"}))).status == "denied"
        gateway.pins.revoke("acme", "files", "echo", actor="test")
        rug.unlink()
        await gateway.refresh_listings()  # what the gateway's background listing does within seconds
    changes = [e for _, e in gateway.published if isinstance(e, McpDefinitionChanged)]
    assert len(changes) == 2 and changes[0].served_digest == changes[1].served_digest


@pytest.mark.parametrize("tamper", ["args", "expired", "deny", "replay", "other-workspace", "second-decision",
                                    "closed-by-requester"])
async def test_a_call_without_a_valid_unused_decision_for_exactly_it_never_reaches_the_upstream(
        gateway, keys, tamper) -> None:
    await approve_first_use(gateway, keys, ECHO, {"text": "hi"})
    event = dispatched(keys, ECHO, {"text": "ok"}, ttl_s=-1 if tamper == "expired" else 60,
                       verdict="deny" if tamper == "deny" else "allow")
    if tamper == "args":
        event = event.model_copy(update={"args": {"text": "something else"}})
    if tamper == "other-workspace":
        event = event.model_copy(update={"workspace": "other"})
    if tamper == "replay":
        assert (await gateway.call(event)).status == "ok"
    if tamper == "second-decision":  # policy decided the same call twice (a redelivered request): it runs once
        assert (await gateway.call(event)).status == "ok"
        event = dispatched(keys, ECHO, {"text": "ok"}, call_id=event.call_id)
    if tamper == "closed-by-requester":  # its requester stopped waiting for the decision and was told "denied"
        assert await gateway.calls.close("acme", "default", event.call_id)
    done = await gateway.call(event)
    assert done.status == "denied", done
    assert done.result == ""
    if tamper in ("second-decision", "closed-by-requester"):
        assert f"call {event.call_id} was already taken" in done.reason


async def test_a_decision_signed_by_an_unknown_key_is_refused(gateway, keys) -> None:
    from caduceus_contracts import Signer
    done = await gateway.call(dispatched(keys, ECHO, {"text": "x"}, signer=Signer.generate("approval"),
                                         definition_digest="a" * 64))
    assert done.status == "denied" and "signature" in done.reason


async def test_a_hanging_tool_is_an_error_result_within_its_timeout(gateway, keys) -> None:
    done = await approve_first_use(gateway, keys, "mcp__files__hang", {})
    assert done.status == "error"
    assert "did not answer within 3 s" in done.reason


async def test_the_upstream_credential_is_injected_and_never_returned(gateway, keys) -> None:
    done = await approve_first_use(gateway, keys, "mcp__files__whoami", {})
    assert done.status == "ok"
    assert TOKEN not in done.result and "REDACTED" in done.result


async def test_a_result_that_breaks_the_output_schema_is_an_error(gateway, keys) -> None:
    done = await approve_first_use(gateway, keys, "mcp__files__wrong_shape", {})
    assert done.status == "error"
    assert "output schema" in done.reason


async def test_structured_results_pass_and_long_results_are_cut(gateway, keys) -> None:
    added = await approve_first_use(gateway, keys, "mcp__files__add", {"a": 2, "b": 3})
    assert added.status == "ok" and json.loads(added.result) == {"total": 5}
    big = await approve_first_use(gateway, keys, "mcp__files__big", {"size": 20000})
    assert big.status == "ok" and len(big.result) < 5200 and "cut to 5000 bytes" in big.result


async def test_a_server_not_registered_for_the_workspace_is_neither_listed_nor_called(gateway, keys, tmp_path) -> None:
    write_registry(gateway.registry.path, stdio_server("files", tmp_path / "rug", scope="{workspaces: [research]}"))
    assert (await gateway.tools_for(grant(keys).grant)).tools == ()
    done = await gateway.call(dispatched(keys, ECHO, {"text": "x"}, signer=keys.approval, definition_digest="a" * 64))
    assert done.status == "denied" and "no MCP server" in done.reason
    research = await gateway.tools_for(grant(keys, workspace="research").grant)
    assert ECHO in {t.name for t in research.tools}


async def test_a_streamable_http_upstream_gets_its_bearer_token_from_the_gateway(gateway, keys, http_upstream) -> None:
    write_registry(gateway.registry.path, f"      web:\n        url: {http_upstream}\n"
                   "        credentials: {headers: {Authorization: 'Bearer {upstream-token}'}}\n")
    done = await approve_first_use(gateway, keys, "mcp__web__echo", {"text": "over http"})
    assert (done.status, done.result) == ("ok", "over http")


async def test_an_unreachable_upstream_is_an_error_not_a_hang(gateway, keys, tmp_path: Path) -> None:
    write_registry(gateway.registry.path, "      web:\n        url: http://127.0.0.1:9/mcp\n")
    listed = await gateway.tools_for(grant(keys).grant)
    assert listed.tools == () and "web:" in listed.problems[0]
    done = await gateway.call(dispatched(keys, "mcp__web__echo", {"text": "x"}))
    assert done.status in ("error", "denied")
