"""Secrets never reach a store, an export or a screen: redaction tables with hostile strings (pure)."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caduceus_redaction import redact_event_body, redact_text, redact_value

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


def test_token_field_of_a_malformed_chat_message_is_removed_too() -> None:
    assert redact_event_body("chat.message.in", {"token": "opaque-but-secret", "kind": "chat.message.in"})["token"] \
        == "[REDACTED]"


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


@settings(max_examples=300, deadline=None)
@given(text=st.lists(st.sampled_from([sample for sample, _, _ in HOSTILE]) | st.text(), max_size=4).map("".join))
def test_the_one_scan_shortcut_redacts_exactly_what_every_rule_would(text: str) -> None:
    from caduceus_redaction.rules import _ASSIGNMENT, _PATTERNS, placeholder

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
    from caduceus_redaction.rules import _CLUES, _PATTERNS, nothing_to_redact

    assert {kind for kind, _ in _PATTERNS} <= set(_CLUES)
    for text in [sample for sample, _, _ in HOSTILE] + MORE_SECRETS:
        assert not nothing_to_redact(json.dumps({"text": text}, ensure_ascii=False)), text
    for field in ("password", "Client-Secret", "API_KEY", "x-auth-token", "Authorization", "Set-Cookie", "PassPhrase"):
        assert not nothing_to_redact(json.dumps({field: "opaque"})), field
