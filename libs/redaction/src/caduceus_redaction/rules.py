"""Secret redaction applied to every event body before it is stored, exported or shown (pure, no I/O).

Two rules. The OIDC token a person sends with a chat message is replaced as a
whole. Anywhere else in a body, in keys and values alike, text that looks like a
credential is replaced with `[REDACTED:<kind>]`, and the value of a field named
like a secret (`password`, `api_key`, ...) is replaced whatever it looks like.
Signatures and digests are not secrets: they are what makes the trail
verifiable, so well-formed ones are kept as they are.

Every rule needs some literal text to match (its clue): a body whose whole JSON
text holds no clue has nothing to redact, and is stored without being walked
string by string (`nothing_to_redact`).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

TOKEN_PLACEHOLDER = "[REDACTED]"


def placeholder(kind: str) -> str:
    return f"[REDACTED:{kind}]"


# Order matters: a PEM block is removed whole before anything inside it could match a shorter pattern.
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("private_key", re.compile(
        r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY-----"
        # A block cut off before its END line is still a key: redact to the end of the text.
        r"(?:.*?-----END[A-Z0-9 ]{0,40}PRIVATE KEY-----|.*\Z)",
        re.DOTALL,
    )),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")),
    ("bearer_token", re.compile(r"\bbearer\s+[A-Za-z0-9\-._~+/]{8,}=*", re.IGNORECASE)),
    ("aws_access_key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("github_token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b")),
    ("api_key", re.compile(r"(?<![A-Za-z0-9_-])sk-[A-Za-z0-9_-]{20,}")),
    ("slack_token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    # Caduceus's own: a service account's API key, and the one-time code identity sends a platform user to pair.
    ("service_account_key", re.compile(r"\bcad_sa_[0-9a-f]{16}_[A-Za-z0-9_-]{20,}")),
    ("pairing_code", re.compile(r"(?<=pairing code )[A-Z2-9]{4}-[A-Z2-9]{4}\b", re.IGNORECASE)),
)

_SECRET_NAME = (
    r"password|passwd|pwd|passphrase|secret|client[_-]?secret|api[_-]?key|apikey|access[_-]?key|"
    r"secret[_-]?access[_-]?key|aws_secret_access_key|access[_-]?token|refresh[_-]?token|id[_-]?token|"
    r"auth[_-]?token|private[_-]?key"
)
# `password=hunter2`, `api_key: "abc"`, `"client_secret": "abc"` (JSON inside a string), `?api_key=abc&x=1`.
_ASSIGNMENT = re.compile(
    rf"(?<![A-Za-z0-9])((?:{_SECRET_NAME})[\"']?\s*[=:]\s*)(?!\[REDACTED)(\"[^\"\n]*\"|'[^'\n]*'|[^\s,;&\"'}}\]]+)",
    re.IGNORECASE,
)
_SECRET_FIELD = re.compile(rf"(?:{_SECRET_NAME}|token|authorization|cookie|set-cookie)", re.IGNORECASE)

# Fields that are verifiable material, not secrets, kept when they have their expected shape.
_KEPT_FIELDS: dict[str, re.Pattern[str]] = {
    "signature": re.compile(r"[A-Za-z0-9_-]{64,128}"),
    "digest": re.compile(r"[0-9a-f]{64}"),
}


# What every rule needs literally, lower-cased: a text (ASCII, lower-cased) holding none of these has nothing any
# rule could replace, so a body whose whole JSON text holds none is stored without walking it string by string.
# A rule added above needs its clue here (tests check that every rule has one and finds its samples).
_CLUES: dict[str, tuple[str, ...]] = {
    "private_key": ("-----begin",),
    "jwt": ("eyj",),
    "bearer_token": ("bearer",),
    "aws_access_key": ("akia", "asia"),
    "github_token": ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    "api_key": ("sk-",),
    "slack_token": ("xox",),
    "service_account_key": ("cad_sa_",),
    "pairing_code": ("pairing code ",),
    # _SECRET_NAME (assignments and secret fields) and the other names of secret fields.
    "secret_name": ("passw", "pwd", "passphrase", "secret", "token", "api_key", "api-key", "apikey", "access_key",
                    "access-key", "accesskey", "private_key", "private-key", "privatekey", "authorization", "cookie"),
}


def _one_of(words: list[str]) -> str:
    """A regex matching any of `words`, factored by common prefix: `re` tries an alternation branch by branch at
    every position, so `ab|ac` scans twice as slowly as `a(?:b|c)`."""
    heads: dict[str, list[str]] = {}
    for word in words:
        heads.setdefault(word[:1], []).append(word[1:])
    branches = []
    for head, tails in sorted(heads.items()):
        if not head:
            continue
        rest = _one_of(tails)
        branches.append(re.escape(head) + (f"(?:{rest})?" if "" in tails and rest else rest))
    if len(branches) <= 1:
        return "".join(branches)
    return "(?:" + "|".join(branches) + ")"


_ANY_CLUE = re.compile(_one_of(sorted({clue for clues in _CLUES.values() for clue in clues})))


def nothing_to_redact(text: str) -> bool:
    """True when no rule could change any part of `text` (say, the JSON text of a whole body).

    Only ASCII text is judged (lower-casing it is then exactly the rules' case-insensitive matching); any other
    text, and any text holding a clue, may hold a secret: False.
    """
    return text.isascii() and _ANY_CLUE.search(text.lower()) is None


def _scoped(pattern: re.Pattern[str]) -> str:
    flags = ("s" if pattern.flags & re.DOTALL else "") + ("i" if pattern.flags & re.IGNORECASE else "")
    return f"(?{flags}:{pattern.pattern})"


# Whether any rule could apply, in one scan: most text (ids, names, ordinary prose) has nothing to redact and is
# returned after this single pass instead of one pass per rule.
_ANY_RULE = re.compile("|".join(_scoped(pattern) for pattern in [p for _, p in _PATTERNS] + [_ASSIGNMENT]))
# Short strings (keys, names, ids) repeat in every event: their redaction is remembered.
_REMEMBERED_LENGTH = 128


def redact_text(text: str) -> str:
    """Replace every credential-looking substring of `text` with `[REDACTED:<kind>]`."""
    if len(text) <= _REMEMBERED_LENGTH:
        return _redact_short(text)
    return _redact(text)


@lru_cache(maxsize=16_384)
def _redact_short(text: str) -> str:
    return _redact(text)


def _redact(text: str) -> str:
    if _ANY_RULE.search(text) is None:
        return text
    for kind, pattern in _PATTERNS:
        text = pattern.sub(placeholder(kind), text)
    return _ASSIGNMENT.sub(lambda m: m.group(1) + placeholder("secret_assignment"), text)


def secret_spans(text: str) -> list[tuple[int, int]]:
    """Where in `text` credential-looking substrings are (start, end): what redact_text would replace, found in
    one scan (for a caller that must know where a match starts, such as a stream held back until it ends)."""
    return [match.span() for match in _ANY_RULE.finditer(text)]


def redact_value(value: Any) -> Any:
    """Redact a decoded JSON value: strings, dict keys and values, list items, recursively."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, list):
        return [redact_value(item) for item in value]
    if isinstance(value, dict):
        return _redact_mapping(value)
    return value


def _redact_mapping(mapping: dict[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = redact_text(str(key))
        # Two keys that redact to the same text must not overwrite each other.
        while name in out:
            name += "'"
        out[name] = _redact_field(str(key), value)
    return out


def _redact_field(key: str, value: Any) -> Any:
    kept = _KEPT_FIELDS.get(key)
    if kept is not None and isinstance(value, str) and kept.fullmatch(value):
        return value
    if _SECRET_FIELD.fullmatch(key) and value not in (None, "") and not isinstance(value, (dict, list, bool)):
        return placeholder("secret_field")
    return redact_value(value)


def redact_event_body(kind: str | None, body: Any) -> Any:
    """The body of one event as it may be stored: the chat token removed, credentials redacted."""
    if kind == "chat.message.in" and isinstance(body, dict) and "token" in body:
        redacted = redact_value({k: v for k, v in body.items() if k != "token"})
        return {**redacted, "token": TOKEN_PLACEHOLDER}
    return redact_value(body)
