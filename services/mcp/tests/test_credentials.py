"""A hostile upstream that knows its credential and tries to hand it back through every channel it has: its tool
results, its error results, a protocol error, and its tool definitions (which policy shows approvers, the audit
keeps and the planner lists). The gateway must never pass the value on (issue 14 item 5)."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caduceus_contracts import McpFactsQuery
from caduceus_mcp import Definition
from caduceus_mcp.gateway import scrub

from .conftest import TOKEN, dispatched, grant

pytestmark = [pytest.mark.timeout(120)]


@pytest.mark.asyncio
async def test_a_protocol_error_naming_the_credential_is_an_error_result_without_it(gateway, keys) -> None:
    facts = await gateway.facts(McpFactsQuery(tenant="acme", workspace="default", tool="mcp__files__refuse"))
    done = await gateway.call(dispatched(keys, "mcp__files__refuse", {}, signer=keys.approval,
                                         definition_digest=facts.digest))
    assert done.status == "error" and "upstream refused token [REDACTED:credential]" in done.reason, done
    assert TOKEN not in done.model_dump_json()


@pytest.mark.asyncio
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


@pytest.mark.asyncio
async def test_the_problems_a_planner_is_told_never_carry_a_credential(gateway, keys, tmp_path) -> None:
    from .conftest import write_registry
    # A server that cannot start, told why: its error message would name the command line, never the environment.
    write_registry(gateway.registry.path, "      broken:\n        command: [/nonexistent/" + TOKEN + "]\n"
                   "        credentials: {env: {MCP_TEST_TOKEN: upstream-token}}\n")
    listed = await gateway.tools_for(grant(keys).grant)
    assert listed.tools == () and listed.problems and TOKEN not in listed.model_dump_json()


# --- properties: wherever a hostile server hides the value, it does not come out ---------------------------------

_SECRET = st.text(alphabet=string.ascii_letters + string.digits + "-_.~+/=", min_size=8, max_size=40)
MARK = "\x00"  # where the secret is planted (generated text never holds it otherwise)
_HIDING = st.lists(st.one_of(st.text(st.characters(blacklist_characters=MARK), max_size=12), st.just(MARK)),
                   min_size=1, max_size=5).map("".join)
_JSON = st.recursive(st.one_of(_HIDING, st.integers(), st.booleans(), st.none()),
                     lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_HIDING, inner, max_size=4)),
                     max_leaves=12)


def plant(value, secret: str):
    """`value` with the secret wherever the mark is."""
    if isinstance(value, str):
        return value.replace(MARK, secret)
    if isinstance(value, list):
        return [plant(v, secret) for v in value]
    if isinstance(value, dict):
        return {plant(k, secret): plant(v, secret) for k, v in value.items()}
    return value


@settings(max_examples=150, deadline=None)
@given(name=_HIDING, description=_HIDING, properties=_JSON, output=st.one_of(st.none(), st.dictionaries(_HIDING, _JSON)),
       title=_HIDING, secret=_SECRET)
def test_no_definition_a_server_can_serve_carries_its_credential_out(name, description, properties, output, title,
                                                                      secret: str) -> None:
    definition = Definition(name=plant(name, secret), description=plant(description, secret),
                            input_schema={"type": "object", "properties": plant(properties, secret)},
                            output_schema=plant(output, secret), annotations={"title": plant(title, secret)})
    cleaned = definition.without([secret])
    assert secret not in json.dumps(cleaned.as_dict(), ensure_ascii=False)


# Credentials that are part of the redaction marker itself ("cred") must not come out inside it either.
_ANY_SECRET = st.one_of(_SECRET, st.sampled_from(["cred", "REDACTED", "credential", "ACTED:cr"]))


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.one_of(st.text(max_size=20), st.integers(0, 2)), max_size=8),
       secrets=st.lists(_ANY_SECRET, min_size=3, max_size=3))
def test_no_result_or_error_text_carries_a_credential_out(parts, secrets: list[str]) -> None:
    text = "".join(secrets[p] if isinstance(p, int) else p for p in parts)
    scrubbed = scrub(text, secrets)
    assert not any(secret in scrubbed for secret in secrets), (text, scrubbed)
