"""A hostile upstream that knows its credential and tries to hand it back through every channel it has: its tool
results, its error results, a protocol error, and its tool definitions (which policy shows approvers, the audit
keeps and the planner lists). The gateway must never pass the value on (issue 14 item 5)."""

from __future__ import annotations

import base64
import codecs
import contextlib
import json
import re
import string
import urllib.parse

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


# A hostile server hands its credential back in another form, so that it is not found by its value.
def _b64_runs(text: str) -> list[bytes]:
    decoded = []
    for run in re.findall(r"[A-Za-z0-9+/_-]{8,}", text):
        for offset in range(4):
            chunk = run[offset:]
            chunk = chunk[: len(chunk) // 4 * 4]
            for alt in (b"+/", b"-_"):
                with contextlib.suppress(ValueError):
                    decoded.append(base64.b64decode(chunk, altchars=alt))
    return decoded


def _hex_runs(text: str) -> list[bytes]:
    return [bytes.fromhex(run[o:][: (len(run) - o) // 2 * 2]) for run in re.findall(r"[0-9a-fA-F]{8,}", text)
            for o in range(2)]


TRANSFORMS = {
    "base64": (lambda t: base64.b64encode(t.encode()).decode(), lambda s, sec: all(sec.encode() not in b for b in _b64_runs(s))),
    "base64url": (lambda t: base64.urlsafe_b64encode(t.encode()).decode(),
                  lambda s, sec: all(sec.encode() not in b for b in _b64_runs(s))),
    "hex": (lambda t: t.encode().hex(), lambda s, sec: all(sec.encode() not in b for b in _hex_runs(s))),
    "HEX": (lambda t: t.encode().hex().upper(), lambda s, sec: all(sec.encode() not in b for b in _hex_runs(s))),
    "reversed": (lambda t: t[::-1], lambda s, sec: sec not in s[::-1]),
    "upper": (lambda t: t.upper(), lambda s, sec: sec.upper() not in s),
    "percent": (lambda t: urllib.parse.quote(t, safe=""), lambda s, sec: sec not in urllib.parse.unquote(s)),
    "rot13": (lambda t: codecs.encode(t, "rot13"), lambda s, sec: sec not in codecs.decode(s, "rot13")),
    "spaced": (lambda t: " ".join(t), lambda s, sec: re.sub(r"[^A-Za-z0-9]", "", sec)
               not in re.sub(r"[^A-Za-z0-9]", "", s)),
}
_PLAIN = st.text(alphabet=string.ascii_letters + string.digits + " ,:", max_size=12)


@settings(max_examples=300, deadline=None)
@given(secret=_SECRET, before=_PLAIN, after=_PLAIN, how=st.sampled_from(sorted(TRANSFORMS)))
def test_a_credential_handed_back_encoded_cannot_be_decoded_from_what_leaves(secret, before, after, how) -> None:
    encode, recoverable_not = TRANSFORMS[how]
    scrubbed = scrub(encode(f"{before}{secret}{after}"), [secret])
    assert recoverable_not(scrubbed, secret), (how, secret, scrubbed)


def test_ordinary_text_around_a_credential_is_kept() -> None:
    text = ("Deployed build 4f2a9c1 to staging at 10:42 UTC; 3 of 3 checks passed, see https://ci.example.com/runs/"
            "88123 and the logs in /var/log/app/2026-12-05.log")
    secret = "tok_Zq8vR2mLx9wK"
    assert scrub(f"{text} with {secret}", [secret]) == f"{text} with [REDACTED:credential]"
