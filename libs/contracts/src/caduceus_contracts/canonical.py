"""RFC 8785 canonical JSON and the SHA-256 call digest that binds decisions to one exact call."""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785


class CanonicalizationError(ValueError):
    """The value cannot be expressed as canonical JSON (NaN, infinity, non-string keys, ...)."""


def canonical_json(value: Any) -> bytes:
    """Return the RFC 8785 (JCS) canonical UTF-8 encoding of a JSON value."""
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError, OverflowError) as exc:
        raise CanonicalizationError(f"not canonicalizable as JSON: {exc}") from exc


def call_digest(*, tenant: str, workspace: str, session: str, tool: str, args: Any) -> str:
    """SHA-256 (hex) over the canonical JSON of one tool call.

    Decisions and approvals name this digest; any change to who, where or what
    (even one argument) yields another digest.
    """
    payload = {"tenant": tenant, "workspace": workspace, "session": session, "tool": tool, "args": args}
    return hashlib.sha256(canonical_json(payload)).hexdigest()
