"""Tool definitions and their digests: what an approver saw is what the gateway lets through.

A definition is a tool's name, description, input and output schema and annotations; its digest is SHA-256
over the RFC 8785 canonical JSON of those five. A pinned digest that no longer matches what the upstream
serves means the tool changed after approval (a "rug pull"): the tool is withheld until approved again.
"""

from __future__ import annotations

import base64
import codecs
import difflib
import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from caduceus_contracts import canonical_json

# What an upstream credential's value is replaced with wherever an upstream hands it back.
REDACTED = "[REDACTED:credential]"


def credential_marker(values: list[str]) -> str:
    """REDACTED, unless a credential is part of that text itself (a value like "cred"): then one without letters."""
    return "[…]" if any(v.lower() in REDACTED.lower() for v in values) else REDACTED


# Shorter encoded forms than this would match ordinary text.
_MIN_FORM = 8


def credential_forms(value: str) -> list[str]:
    """A credential's value and what a server can turn it into so that it is not found by its value: reversed,
    ROT13, hex, percent-encoded, base64 (standard and URL-safe, at each of the three alignments it can have
    inside a longer encoded text: the characters that depend on the value alone). Matched in any letter case."""
    raw = value.encode()
    forms = {value[::-1], codecs.encode(value, "rot13"), raw.hex(), quote(value, safe=""),
             "".join(f"%{byte:02X}" for byte in raw)}
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw).decode()
        core = encoded[4 * ((shift + 2) // 3): 4 * ((shift + len(raw)) // 3)]
        forms |= {core, core.replace("+", "-").replace("/", "_")}
    return [value, *sorted((f for f in forms if len(f) >= _MIN_FORM and f != value), key=len, reverse=True)]


@lru_cache(maxsize=256)
def _pattern(values: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = []
    for value in values:
        alternatives += [re.escape(form) for form in credential_forms(value)]
        if len(value) >= _MIN_FORM:  # spelled out with up to two separators between its characters
            alternatives.append(r"[^A-Za-z0-9]{0,2}".join(re.escape(c) for c in value))
    return re.compile("|".join(sorted(set(alternatives), key=len, reverse=True)), re.IGNORECASE)


def hide_credentials(text: str, values: list[str]) -> str:
    """`text` with every credential in `values` replaced, as given or in any form of credential_forms."""
    values = [v for v in values if len(v) >= 4]
    if not values:
        return text
    marker = credential_marker(values)
    pattern = _pattern(tuple(sorted(set(values))))
    # Until nothing is left: taking one form out can join the pieces of another around it.
    for _ in range(8):
        hidden = pattern.sub(marker, text)
        if hidden == text:
            break
        text = hidden
    return text


@dataclass(frozen=True)
class Definition:
    """One upstream tool as served (the five fields that are pinned)."""

    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    annotations: dict[str, Any]

    @classmethod
    def of(cls, tool: Any) -> Definition:
        """From an SDK `Tool`."""
        annotations = tool.annotations.model_dump(mode="json", by_alias=True, exclude_none=True) if tool.annotations else {}
        return cls(name=tool.name, description=tool.description or "", input_schema=dict(tool.input_schema or {}),
                   output_schema=dict(tool.output_schema) if tool.output_schema else None, annotations=annotations)

    def without(self, values: list[str]) -> Definition:
        """This definition with every credential value in it replaced: a server can echo what it was given in a
        description or schema, which approvers are shown, the audit keeps and planners list."""
        values = [v for v in values if len(v) >= 4]
        if not values:
            return self

        def clean(item: Any) -> Any:
            if isinstance(item, str):
                return hide_credentials(item, values)
            if isinstance(item, dict):
                return {clean(k): clean(v) for k, v in item.items()}
            if isinstance(item, list):
                return [clean(v) for v in item]
            return item

        return Definition(name=clean(self.name), description=clean(self.description),
                          input_schema=clean(self.input_schema), output_schema=clean(self.output_schema),
                          annotations=clean(self.annotations))

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "inputSchema": self.input_schema,
                "outputSchema": self.output_schema, "annotations": self.annotations}

    @property
    def digest(self) -> str:
        return hashlib.sha256(canonical_json(self.as_dict())).hexdigest()

    @property
    def read_only(self) -> bool:
        return bool(self.annotations.get("readOnlyHint"))


def definition_diff(pinned: dict[str, Any], served: dict[str, Any], limit: int = 20_000) -> str:
    """A unified diff of two definitions (pretty JSON), cut to `limit` characters."""
    before = json.dumps(pinned, indent=2, sort_keys=True).splitlines()
    after = json.dumps(served, indent=2, sort_keys=True).splitlines()
    text = "\n".join(difflib.unified_diff(before, after, "pinned", "served", lineterm=""))
    return text if len(text) <= limit else text[: limit - 12] + "\n[truncated]"
