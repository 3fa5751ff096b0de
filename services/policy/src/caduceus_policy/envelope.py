"""Reading the envelope of a tool request that does not parse, so it can still be answered with a deny.

A request whose body is not valid UTF-8, is nested past the JSON parser's limit or is too large
cannot be trusted for anything, but if its top level names the call (tenant, workspace,
session, call id, tool, digest) policy answers that call with a signed deny saying why, and
the planner does not have to wait for its timeout. A deny authorizes nothing, so reading
these fields without the rest of the request is safe.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from caduceus_contracts import ContractError, ToolCallRequested, parse_event, subjects

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class CallRef:
    """What a decision names about its call."""

    tenant: str
    workspace: str
    session_id: str
    call_id: str
    tool: str
    digest: str


def top_level_strings(text: str) -> dict[str, str]:
    """The string-valued keys of the top-level JSON object in `text`, read without recursion (any depth)."""
    found: dict[str, str] = {}
    depth, expecting, key, i = 0, "", "", 0
    while i < len(text):
        char = text[i]
        if char == '"':
            end = i + 1
            while end < len(text) and text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            raw = text[i:end + 1]
            i = end + 1
            if depth == 1 and expecting == "key":
                key, expecting = _string(raw), "colon"
            elif depth == 1 and expecting == "value":
                value = _string(raw)
                if key and value is not None and key not in found:
                    found[key] = value
                expecting = "comma"
            continue
        if char in "{[":
            depth += 1
            if depth == 1:
                expecting = "key"
            elif depth == 2 and expecting == "value":
                expecting = "comma"
        elif char in "}]":
            depth -= 1
            if depth <= 0:
                break
        elif depth == 1 and char == ":":
            expecting = "value"
        elif depth == 1 and char == ",":
            expecting = "key"
        i += 1
    return found


def _string(raw: str) -> str | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def salvage_request(subject: str, body: bytes) -> tuple[CallRef, str] | None:
    """The call a refused tool request names, and why it was refused; None when it names no call clearly."""
    try:
        parse_event(body, expect=ToolCallRequested, subject=subject)
        return None
    except ContractError as exc:
        why = str(exc)
    fields = top_level_strings(body[: 4 * 1024 * 1024].decode("utf-8", "replace"))
    if body and not _valid_utf8(body):
        why = "the message is not valid UTF-8"
    call = CallRef(tenant=fields.get("tenant", ""), workspace=fields.get("workspace", ""),
                   session_id=fields.get("session_id", ""), call_id=fields.get("call_id", ""),
                   tool=fields.get("tool", ""), digest=fields.get("digest", ""))
    if fields.get("kind") != "tool.requested" or subjects.tenant_of(subject) != call.tenant:
        return None
    if not (subjects.TOKEN_RE.match(call.tenant) and subjects.TOKEN_RE.match(call.workspace)
            and subjects.SESSION_RE.match(call.session_id) and 0 < len(call.call_id) <= 128
            and 0 < len(call.tool) <= 256 and _DIGEST.match(call.digest)):
        return None
    return call, why


def _valid_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False
