"""RFC 8785 canonical JSON and the SHA-256 call digest that binds decisions to one exact call."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import rfc8785

_SAFE_INT = 2**53 - 1  # JCS numbers are IEEE doubles: larger integers are refused (by rfc8785), not rounded
# The standard library writes exactly the RFC 8785 bytes for values without floats, with integers in range and
# ASCII object keys (so code point order is UTF-16 order); escapes and separators are the same.
_STDLIB = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False)


class CanonicalizationError(ValueError):
    """The value cannot be expressed as canonical JSON (NaN, infinity, non-string keys, ...)."""


def canonical_json(value: Any) -> bytes:
    """Return the RFC 8785 (JCS) canonical UTF-8 encoding of a JSON value."""
    if _plain(value):
        try:
            return _STDLIB.encode(value).encode("utf-8")
        except (TypeError, ValueError):  # an unpaired surrogate: rfc8785 says why below
            pass
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError, OverflowError) as exc:
        raise CanonicalizationError(f"not canonicalizable as JSON: {exc}") from exc


def _plain(value: Any) -> bool:
    """True when the value holds only what the standard library writes canonically (see _STDLIB)."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str or item is None or kind is bool:
            continue
        if kind is int:
            if -_SAFE_INT <= item <= _SAFE_INT:
                continue
            return False
        if kind is dict:
            for key, inner in item.items():
                if type(key) is not str or not key.isascii():
                    return False
                stack.append(inner)
            continue
        if kind is list or kind is tuple:
            stack.extend(item)
            continue
        return False  # floats, subclasses, other types: rfc8785 decides
    return True


def call_digest(*, tenant: str, workspace: str, session: str, tool: str, args: Any) -> str:
    """SHA-256 (hex) over the canonical JSON of one tool call.

    Decisions and approvals name this digest; any change to who, where or what
    (even one argument) yields another digest.
    """
    payload = {"tenant": tenant, "workspace": workspace, "session": session, "tool": tool, "args": args}
    return hashlib.sha256(canonical_json(payload)).hexdigest()
