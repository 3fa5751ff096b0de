"""Secrets never reach the audit store: redaction tables with hostile strings (pure, no servers)."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caduceus_audit.domain.entries import event_entry
from caduceus_audit.domain.redaction import redact_event_body, redact_text, redact_value
from caduceus_contracts import (
    ChatMessageIn,
    Decision,
    SignedDecision,
    Signer,
    ToolCallDecided,
    call_digest,
    utcnow,
)

AWS = "AKIAIOSFODNN7EXAMPLE"
OPENAI = "sk-proj-Abc123def456GHI789jkl012MNO345pqr"
GITHUB = "ghp_" + "a1B2c3D4e5" * 4
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7x\nq9+/abc==\n-----END RSA PRIVATE KEY-----"

HOSTILE = [
    # (text, secret that must be gone, kind the placeholder must name)
    (f"my key is {AWS}, please rotate", AWS, "aws_access_key"),
    (f"export AWS_ACCESS_KEY_ID={AWS}", AWS, "aws_access_key"),
    (f"OPENAI_API_KEY={OPENAI}", OPENAI, "api_key"),
    (f"curl -H 'Authorization: Bearer {JWT}' https://x", JWT, "jwt"),
    ("Authorization: bearer abcdef0123456789._~+/token==", "abcdef0123456789._~+/token==", "bearer_token"),
    (f"here:\n{PEM}\nthanks", "MIIEowIBAAKCAQEA7x", "private_key"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA (cut off", "b3BlbnNzaC1rZXktdjEAAAAA", "private_key"),
    ("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA\n-----END PRIVATE KEY-----", "MC4CAQAwBQYDK2VwBCIEIA",
     "private_key"),
    ("db password=hunter2 and more", "hunter2", "secret_assignment"),
    ("PASSWORD = 'correct horse battery staple'", "correct horse battery staple", "secret_assignment"),
    ('{"api_key": "k-123456", "x": 1}', "k-123456", "secret_assignment"),
    ("https://api.example.com/v1?api_key=abc123xyz&page=2", "abc123xyz", "secret_assignment"),
    ("client_secret:s3cr3t-v4lue;next", "s3cr3t-v4lue", "secret_assignment"),
    (f"token {GITHUB} pushed", GITHUB, "github_token"),
    ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", "github_pat_11ABCDEFG0123456789", "github_token"),
    (f"nested 'quote' {OPENAI}\x00 after NUL", OPENAI, "api_key"),
    ("the bot's key cad_sa_0123456789abcdef_Zx9-_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789ab leaked",
     "Zx9-_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789ab", "service_account_key"),
    ("ask an administrator of 'acme' to approve pairing code K7QM-2XWP (it expires at 10:00 UTC)", "K7QM-2XWP",
     "pairing_code"),
]


@pytest.mark.parametrize(("text", "secret", "kind"), HOSTILE)
def test_credentials_in_text_are_replaced_by_their_kind(text: str, secret: str, kind: str) -> None:
    redacted = redact_text(text)
    assert secret not in redacted
    assert f"[REDACTED:{kind}]" in redacted


@pytest.mark.parametrize("text", [
    "task-1234567890abcdefghijklmnop finished",  # `sk-` inside a word is not an API key
    "the password reset page is at /reset",
    "AKIA is a prefix, AKIAshort is not a key",
    "sha256 " + "ab" * 32,
    "Bearer of bad news",
    "ordinary text with = signs: a=b, c: d",
])
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact_text(text) == text


def test_secrets_are_found_in_nested_values_and_keys() -> None:
    body = {"args": {"command": f"aws s3 ls --key {AWS}", "env": [{"k": OPENAI}], OPENAI: "value under a secret key",
                     "password": "plain-looking", "retries": 3}}
    redacted = redact_value(body)
    dumped = json.dumps(redacted)
    assert AWS not in dumped and OPENAI not in dumped and "plain-looking" not in dumped
    assert redacted["args"]["password"] == "[REDACTED:secret_field]"
    assert redacted["args"]["retries"] == 3
    assert redacted["args"]["[REDACTED:api_key]"] == "value under a secret key"


def test_two_secret_keys_that_redact_alike_both_survive() -> None:
    redacted = redact_value({"sk-aaaaaaaaaaaaaaaaaaaaaaaa": 1, "sk-bbbbbbbbbbbbbbbbbbbbbbbb": 2})
    assert sorted(redacted.values()) == [1, 2]


def test_chat_token_is_removed_from_chat_messages() -> None:
    message = ChatMessageIn(tenant="acme", session_id="s1", token=JWT, text=f"my key {AWS}")
    entry = event_entry("cad.v1.chat.in.acme", message)
    stored = json.loads(entry.body)
    assert stored["token"] == "[REDACTED]"
    assert AWS not in entry.body and JWT not in entry.body
    assert stored["text"] == "my key [REDACTED:aws_access_key]"


def test_token_field_of_a_malformed_chat_message_is_removed_too() -> None:
    assert redact_event_body("chat.message.in", {"token": "opaque-but-secret", "kind": "chat.message.in"})["token"] \
        == "[REDACTED]"


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


def test_a_secret_dressed_as_a_signature_is_still_redacted() -> None:
    assert redact_value({"signature": f"{AWS} leaked"})["signature"] == "[REDACTED:aws_access_key] leaked"


@pytest.mark.parametrize("text", [
    "-----BEGIN PRIVATE KEY-----" * 20_000,
    "password=" * 50_000,
    "Bearer " * 50_000,
    "sk-" + "a" * 300_000,
    "eyJ" + "a" * 100_000 + ".eyJ" * 10_000,
])
def test_hostile_input_is_redacted_in_linear_time(text: str) -> None:
    started = time.monotonic()
    redact_text(text)
    assert time.monotonic() - started < 2.0


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


@settings(max_examples=300, deadline=None)
@given(text=st.lists(st.sampled_from([sample for sample, _, _ in HOSTILE]) | st.text(), max_size=4).map("".join))
def test_the_one_scan_shortcut_redacts_exactly_what_every_rule_would(text: str) -> None:
    from caduceus_audit.domain.redaction import _ASSIGNMENT, _PATTERNS, placeholder

    expected = text
    for kind, pattern in _PATTERNS:
        expected = pattern.sub(placeholder(kind), expected)
    expected = _ASSIGNMENT.sub(lambda m: m.group(1) + placeholder("secret_assignment"), expected)
    assert redact_text(text) == expected


# One of each prefix a rule knows that HOSTILE does not show.
MORE_SECRETS = ["ASIAIOSFODNN7EXAMPLE", *(f"gh{c}_" + "a1B2c3D4e5" * 4 for c in "pousr"), "xoxb-1234567890-abcdef",
                "xoxp-1234567890-abcdef", "passwd: x", "pwd=x", "passphrase=x", "access-key=x", "privatekey=x",
                "refresh_token=x"]


def test_every_rule_has_clues_and_they_find_its_samples() -> None:
    from caduceus_audit.domain.redaction import _CLUES, _PATTERNS, nothing_to_redact

    assert {kind for kind, _ in _PATTERNS} <= set(_CLUES)
    for text in [sample for sample, _, _ in HOSTILE] + MORE_SECRETS:
        assert not nothing_to_redact(json.dumps({"text": text}, ensure_ascii=False)), text
    for field in ("password", "Client-Secret", "API_KEY", "x-auth-token", "Authorization", "Set-Cookie", "PassPhrase"):
        assert not nothing_to_redact(json.dumps({field: "opaque"})), field


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


clue_laden = st.sampled_from([sample for sample, _, _ in HOSTILE] + MORE_SECRETS + [
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
