"""Secrets never reach the audit store: what an entry stores is the redacted event, in canonical JSON (pure).

The redaction rules themselves are tested in libs/redaction.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caduceus_audit.domain.entries import event_entry
from caduceus_contracts import (
    ChatMessageIn,
    Decision,
    SignedDecision,
    Signer,
    ToolCallDecided,
    call_digest,
    utcnow,
)
from caduceus_redaction import redact_event_body

AWS = "AKIAIOSFODNN7EXAMPLE"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"
# Samples of each kind of secret the rules know (libs/redaction's tables hold the full set).
SECRETS = [f"my key is {AWS}", "OPENAI_API_KEY=sk-proj-Abc123def456GHI789jkl012MNO345pqr", f"Bearer {JWT}",
           "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA\n-----END PRIVATE KEY-----", "db password=hunter2",
           "token ghp_" + "a1B2c3D4e5" * 4, "ASIAIOSFODNN7EXAMPLE", "xoxb-1234567890-abcdef", "refresh_token=x",
           "cad_sa_0123456789abcdef_Zx9-_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789ab", "pairing code K7QM-2XWP",
           "https://api.example.com/v1?api_key=abc123xyz&page=2"]


def test_chat_token_is_removed_from_chat_messages() -> None:
    message = ChatMessageIn(tenant="acme", session_id="s1", token=JWT, text=f"my key {AWS}")
    entry = event_entry("cad.v1.chat.in.acme", message)
    stored = json.loads(entry.body)
    assert stored["token"] == "[REDACTED]"
    assert AWS not in entry.body and JWT not in entry.body
    assert stored["text"] == "my key [REDACTED:aws_access_key]"


def test_signatures_and_digests_are_kept() -> None:
    signer = Signer.generate("policy")
    digest = call_digest(tenant="acme", workspace="default", session="s1", tool="terminal", args={"command": "ls"})
    decision = Decision(tenant="acme", workspace="default", session_id="s1", call_id="c1", tool="terminal",
                        digest=digest, verdict="allow", reason="ok", expires_at=utcnow() + timedelta(seconds=60))
    signed = SignedDecision.issue(signer, decision)
    event = ToolCallDecided(tenant="acme", call_id="c1", workspace="default", decision=signed)
    stored = json.loads(event_entry("cad.v1.tool.decided.acme", event).body)
    assert stored["decision"]["signature"] == signed.signature
    assert stored["decision"]["decision"]["digest"] == digest
    assert stored["decision"]["key_id"] == signed.key_id


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(value=json_values)
def test_stored_bodies_are_rfc8785_canonical_json(value) -> None:
    from caduceus_audit.domain.entries import body_text
    from caduceus_contracts import CanonicalizationError, canonical_json

    try:
        expected = canonical_json(value).decode("utf-8")
    except (CanonicalizationError, UnicodeDecodeError):
        return  # refused by JCS itself: kept by the fallback, compared by the test below
    assert body_text(value) == expected


@pytest.mark.parametrize("value", [
    {"command": "ls -la", "timeout": 30, "nested": [{"a": None, "b": True}]},  # nothing to redact: the shortcut
    {"command": "ſecret=hunter2"},  # non-ASCII case folding: `ſ` matches `s` when the rules ignore case
    {"paſſword": "plain"},
    {"text": "api_\u212aey: abc123"},  # KELVIN SIGN folds to k
    {"text": "apİ_key=abc123"},
    {"text": "line one\neyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln"},  # escaped as \n in the JSON text
    {"text": 'quoted "password"="x"', "tab": "Bearer\tabcdefgh12345678"},
    {"TOKEN": "t", "cookie": "c", "list": [AWS.lower(), AWS]},
    {"token": "chat token", "text": "hello"},
    {"big": 2**60, "float": 1.5, "text": "password=hunter2"},
    {"\ud800": "lone surrogate", "k": "\udfff"},
])
@pytest.mark.parametrize("kind", ["tool.requested", "chat.message.in", None])
def test_stored_body_is_what_the_full_redaction_walk_stores(value, kind) -> None:
    from caduceus_audit.domain.entries import body_text, stored_body

    assert stored_body(kind, value) == body_text(redact_event_body(kind, value))


clue_laden = st.sampled_from(SECRETS + [
    "password", "PASSWORD=x", "Bearer abcdefgh12345678", "api-key: 1", "ſecret=1", "İ", "\u212a", "sk-" + "a" * 24,
    "token", "Authorization", "\neyJabcdef.eyJabcdef.x", "pairing code AB2C-DE3F", "x\ty", '"', "\\"])
body_strings = st.lists(clue_laden | st.text(max_size=12), max_size=3).map("".join)
clue_bodies = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | body_strings,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(body_strings, inner, max_size=4),
    max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(value=clue_bodies, kind=st.sampled_from(["tool.completed", "chat.message.in"]))
def test_the_whole_text_shortcut_stores_exactly_what_the_walk_would(value, kind) -> None:
    from caduceus_audit.domain.entries import body_text, stored_body

    assert stored_body(kind, value) == body_text(redact_event_body(kind, value))
