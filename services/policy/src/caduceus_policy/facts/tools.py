"""Hermes's tools as policy sees them: each tool's family, and the shape its arguments must have.

A call whose arguments do not have the shape the tool expects (a number where a command
should be, a list where a path should be) is not guessed at: it is denied with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

TERMINAL_TOOLS = frozenset({"terminal"})
FILE_READ_TOOLS = frozenset({"read_file", "search_files"})
FILE_WRITE_TOOLS = frozenset({"write_file", "patch"})
CODE_TOOLS = frozenset({"execute_code"})
MEMORY_TOOLS = frozenset({"memory"})
SKILL_WRITE_TOOLS = frozenset({"skill_manage"})
AGENT_TOOLS = frozenset({"todo", "clarify", "session_search", "delegate_task", "skills_list", "skill_view"})
MCP_PREFIX = "mcp__"

_TEXT, _INT, _BOOL, _TEXT_LIST, _LIST = "text", "integer", "true/false", "list of texts", "list"
# tool -> argument -> (expected kind, required)
ARGUMENT_SHAPES: dict[str, dict[str, tuple[str, bool]]] = {
    "terminal": {"command": (_TEXT, True), "workdir": (_TEXT, False), "timeout": (_INT, False),
                 "background": (_BOOL, False)},
    "read_file": {"path": (_TEXT, True), "offset": (_INT, False), "limit": (_INT, False)},
    "write_file": {"path": (_TEXT, True), "content": (_TEXT, True)},
    "patch": {"mode": (_TEXT, False), "path": (_TEXT, False), "patch": (_TEXT, False),
              "old_string": (_TEXT, False), "new_string": (_TEXT, False), "replace_all": (_BOOL, False)},
    "search_files": {"pattern": (_TEXT, False), "path": (_TEXT, False), "target": (_TEXT, False)},
    "execute_code": {"code": (_TEXT, True)},
    "browser_navigate": {"url": (_TEXT, True)},
    "web_extract": {"urls": (_TEXT_LIST, True)},
    "web_search": {"query": (_TEXT, True)},
    "memory": {"action": (_TEXT, False), "target": (_TEXT, False), "content": (_TEXT, False),
               "old_text": (_TEXT, False), "operations": (_LIST, False)},
    "skill_manage": {"action": (_TEXT, True), "name": (_TEXT, True), "content": (_TEXT, False),
                     "file_path": (_TEXT, False), "file_content": (_TEXT, False)},
}


def family_of(tool: str) -> str:
    """terminal, file, web, code, mcp, memory, skill, agent or other."""
    if tool in TERMINAL_TOOLS:
        return "terminal"
    if tool in FILE_READ_TOOLS or tool in FILE_WRITE_TOOLS:
        return "file"
    if tool in CODE_TOOLS:
        return "code"
    if tool.startswith(MCP_PREFIX):
        return "mcp"
    if tool in MEMORY_TOOLS:
        return "memory"
    if tool in SKILL_WRITE_TOOLS or tool.startswith("skill"):
        return "skill"
    if tool.startswith(("browser_", "web_")) or tool in ("vision_analyze",):
        return "web"
    if tool in AGENT_TOOLS:
        return "agent"
    return "other"


@dataclass(frozen=True)
class McpName:
    server: str
    tool: str


def mcp_name(tool: str) -> McpName | None:
    """`mcp__<server>__<tool>` (Hermes's naming) split into server and tool."""
    if not tool.startswith(MCP_PREFIX):
        return None
    server, sep, name = tool[len(MCP_PREFIX):].partition("__")
    if not sep or not server or not name:
        return McpName(server=server, tool="")
    return McpName(server=server, tool=name)


def _kind_of(value: object) -> str:
    if isinstance(value, bool):
        return _BOOL
    if isinstance(value, int):
        return _INT
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return _TEXT
    if isinstance(value, list):
        return _TEXT_LIST if all(isinstance(v, str) for v in value) else _LIST
    if value is None:
        return "null"
    return "object"


def shape_problem(tool: str, args: Mapping[str, object]) -> str | None:
    """Why the arguments do not fit the tool (wrong type, missing), or None."""
    shapes = ARGUMENT_SHAPES.get(tool)
    if shapes is None:
        return None
    for name, (kind, required) in shapes.items():
        if name not in args:
            if required:
                return f"{tool} needs the argument `{name}` ({kind})"
            continue
        value = args[name]
        actual = _kind_of(value)
        if value is None and not required:
            continue
        fits = actual == kind or (kind == _LIST and actual == _TEXT_LIST) or (kind == _INT and actual == _INT)
        if not fits:
            return f"argument `{name}` of {tool} must be {kind}, not {actual}"
    return None
