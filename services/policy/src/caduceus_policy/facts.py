"""Facts about one tool call, extracted from its arguments: what rules and policy packs match on.

Pure functions, no I/O: paths are resolved lexically against the workspace root the
executor will use, so a decision never depends on what the policy host's disk holds.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

# The facts a rule's `when:` may name, with the type of value each one takes.
KNOWN_FACTS: dict[str, type] = {"path_outside_workspace": bool, "destructive_command": bool}
# The argument each fact is about, so people deciding on a call see which value made it risky.
FACT_ARGUMENTS: dict[str, str] = {"path_outside_workspace": "path", "destructive_command": "command"}

# A command word that deletes or overwrites data, at the start of the line or after a shell separator
# (optionally behind sudo). Deliberately broad: it only ever makes policy ask a person.
_DESTRUCTIVE = re.compile(r"(?:^|[;&|(`\n]|\$\()\s*(?:sudo\s+)?(?:rm|rmdir|shred|truncate|dd|mkfs(?:\.\w+)?)(?=\s|$)")

# File headers of a V4A patch (the `patch` tool's patch mode names its files inside the patch text).
_V4A_FILE = re.compile(r"^\*\*\* (?:Update File|Add File|Delete File|Move to):\s*(.*?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class RequestFacts:
    """Everything a rule engine may look at for one call: who, where, which tool, and derived facts."""

    tenant: str
    roles: tuple[str, ...]
    tool: str
    args: Mapping[str, Any]
    facts: Mapping[str, Any] = field(default_factory=dict)


def resolve_in_workspace(path: str, workspace_root: PurePosixPath) -> PurePosixPath:
    """Where `path` lands: relative paths join the workspace root, and `..` is normalized away."""
    root = posixpath.normpath(str(workspace_root))
    return PurePosixPath(posixpath.normpath(posixpath.join(root, path)))


def is_outside_workspace(path: object, workspace_root: PurePosixPath) -> bool:
    """True unless `path` is a string that resolves to the workspace root or below it.

    A non-string path or one starting with `~` (the executor's home, not the workspace)
    counts as outside: when in doubt the write is treated as leaving the workspace.
    """
    if not isinstance(path, str) or path.startswith("~") or "\x00" in path:
        return True
    root = PurePosixPath(posixpath.normpath(str(workspace_root)))
    resolved = resolve_in_workspace(path, root)
    return resolved != root and root not in resolved.parents


def paths_named(args: Mapping[str, Any]) -> list[object]:
    """Every file path a call names: its `path` argument and the files of a V4A `patch` body."""
    named: list[object] = []
    if "path" in args:
        named.append(args["path"])
    patch = args.get("patch")
    if isinstance(patch, str):
        named.extend(_V4A_FILE.findall(patch))
    return named


def is_destructive_command(command: object) -> bool:
    """True when a shell command runs a deleting or overwriting program (rm, shred, dd, ...)."""
    return isinstance(command, str) and bool(_DESTRUCTIVE.search(command))


def extract_facts(args: Mapping[str, Any], workspace_root: PurePosixPath) -> dict[str, Any]:
    """The facts of one call's arguments (see KNOWN_FACTS)."""
    return {
        "path_outside_workspace": any(is_outside_workspace(p, workspace_root) for p in paths_named(args)),
        "destructive_command": is_destructive_command(args.get("command")),
    }


def request_facts(
    tenant: str, roles: tuple[str, ...], tool: str, args: Mapping[str, Any], workspace_root: PurePosixPath
) -> RequestFacts:
    """Bundle who, which tool and the extracted facts for a rule engine."""
    return RequestFacts(tenant=tenant, roles=tuple(roles), tool=tool, args=args,
                        facts=extract_facts(args, workspace_root))
