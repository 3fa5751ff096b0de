"""Tool definitions and their digests: what an approver saw is what the gateway lets through.

A definition is a tool's name, description, input and output schema and annotations; its digest is SHA-256
over the RFC 8785 canonical JSON of those five. A pinned digest that no longer matches what the upstream
serves means the tool changed after approval (a "rug pull"): the tool is withheld until approved again.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from caduceus_contracts import canonical_json

# What an upstream credential's value is replaced with wherever an upstream hands it back.
REDACTED = "[REDACTED:credential]"


def credential_marker(values: list[str]) -> str:
    """REDACTED, unless a credential is part of that text itself (a value like "cred"): then one without letters."""
    return "[…]" if any(v in REDACTED for v in values) else REDACTED


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
        marker = credential_marker(values)

        def clean(item: Any) -> Any:
            if isinstance(item, str):
                for value in values:
                    item = item.replace(value, marker)
                return item
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
