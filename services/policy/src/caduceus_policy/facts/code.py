"""What code run by `execute_code` (or `python -c`, `perl -e` ... in a terminal) may do.

Python is parsed (never run) and its imports and calls are mapped to risky operations.
Other languages, and Python that does not parse, are matched by the names of the same
operations in their text. The result is a set of operation names a pack can match on.
"""

from __future__ import annotations

import ast
import re

# Operation names, as they appear in the `code_operations` fact.
PROCESS, NETWORK, FILE_WRITE, FILE_DELETE, DYNAMIC_CODE, NATIVE_CODE, ENVIRONMENT, PRIVILEGE, UNREADABLE = (
    "process", "network", "file_write", "file_delete", "dynamic_code", "native_code", "environment", "privilege",
    "unreadable",
)
RISKY_OPERATIONS = frozenset({PROCESS, NETWORK, FILE_DELETE, DYNAMIC_CODE, NATIVE_CODE, PRIVILEGE, UNREADABLE})

_MODULES = {
    "subprocess": PROCESS, "pty": PROCESS, "multiprocessing": PROCESS, "socket": NETWORK, "ssl": NETWORK,
    "urllib": NETWORK, "http": NETWORK, "requests": NETWORK, "httpx": NETWORK, "aiohttp": NETWORK, "ftplib": NETWORK,
    "smtplib": NETWORK, "telnetlib": NETWORK, "paramiko": NETWORK, "websocket": NETWORK, "websockets": NETWORK,
    "ctypes": NATIVE_CODE, "cffi": NATIVE_CODE, "mmap": NATIVE_CODE, "pickle": DYNAMIC_CODE, "marshal": DYNAMIC_CODE,
    "importlib": DYNAMIC_CODE, "code": DYNAMIC_CODE, "codeop": DYNAMIC_CODE, "shutil": FILE_WRITE,
}
_CALLS = {
    "os.system": PROCESS, "os.popen": PROCESS, "os.fork": PROCESS, "os.kill": PROCESS, "os.killpg": PROCESS,
    "eval": DYNAMIC_CODE, "exec": DYNAMIC_CODE, "compile": DYNAMIC_CODE, "__import__": DYNAMIC_CODE,
    "os.remove": FILE_DELETE, "os.unlink": FILE_DELETE, "os.rmdir": FILE_DELETE, "os.removedirs": FILE_DELETE,
    "shutil.rmtree": FILE_DELETE, "os.truncate": FILE_DELETE,
    "os.chmod": PRIVILEGE, "os.chown": PRIVILEGE, "os.setuid": PRIVILEGE, "os.setgid": PRIVILEGE,
    "os.seteuid": PRIVILEGE, "os.chroot": PRIVILEGE, "os.environ": ENVIRONMENT, "os.getenv": ENVIRONMENT,
    "os.putenv": ENVIRONMENT, "os.rename": FILE_WRITE, "os.replace": FILE_WRITE, "os.mkdir": FILE_WRITE,
    "os.makedirs": FILE_WRITE, "os.symlink": FILE_WRITE, "os.link": FILE_WRITE,
}
_CALL_PREFIXES = {"os.exec": PROCESS, "os.spawn": PROCESS, "os.posix_spawn": PROCESS, "pathlib.": FILE_WRITE}
_PATH_METHODS = {"unlink": FILE_DELETE, "rmdir": FILE_DELETE, "write_text": FILE_WRITE, "write_bytes": FILE_WRITE,
                 "chmod": PRIVILEGE, "symlink_to": FILE_WRITE, "rename": FILE_WRITE, "touch": FILE_WRITE}
# For text that is not Python: the same operations by their usual spellings.
_TEXT_PATTERNS = (
    (PROCESS, re.compile(r"\b(?:system|exec[lv]?p?e?|popen|spawn|child_process|Runtime\.getRuntime|IO\.popen|"
                         r"proc_open|shell_exec|passthru|`[^`]+`)\b")),
    (NETWORK, re.compile(r"\b(?:socket|urlopen|requests\.|http\.|fetch\(|XMLHttpRequest|Net::HTTP|LWP::|curl_init|"
                         r"IO::Socket|net\.connect)")),
    (FILE_DELETE, re.compile(r"\b(?:unlink|rmtree|rmdir|rm_rf|File\.delete|fs\.rm|remove_dir_all)\b")),
    (DYNAMIC_CODE, re.compile(r"\b(?:eval|exec|Function\(|instance_eval|class_eval|base64_decode|atob)\b")),
)


def code_operations(code: str, language: str = "python") -> tuple[set[str], list[str]]:
    """The risky operations `code` uses, and the text snippets that showed each (for explanations)."""
    if language.lower().startswith("python"):
        try:
            tree = ast.parse(code)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            operations, evidence = _text_operations(code)
            return operations | {UNREADABLE}, evidence + ["Python that does not parse"]
        return _python_operations(tree)
    return _text_operations(code)


def _text_operations(code: str) -> tuple[set[str], list[str]]:
    operations: set[str] = set()
    evidence: list[str] = []
    for operation, pattern in _TEXT_PATTERNS:
        match = pattern.search(code)
        if match:
            operations.add(operation)
            evidence.append(match.group(0))
    return operations, evidence


def _dotted(node: ast.AST) -> str:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _python_operations(tree: ast.AST) -> tuple[set[str], list[str]]:
    operations: set[str] = set()
    evidence: list[str] = []
    aliases: dict[str, str] = {}

    def add(operation: str, what: str) -> None:
        if operation not in operations:
            evidence.append(what)
        operations.add(operation)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name.split(".")[0]] = alias.name
                root = alias.name.split(".")[0]
                if root in _MODULES:
                    add(_MODULES[root], f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            if root in _MODULES:
                add(_MODULES[root], f"from {node.module} import ...")
            elif root == "os":
                for alias in node.names:
                    operation = _call_operation(f"os.{alias.name}")
                    if operation:
                        add(operation, f"from os import {alias.name}")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            head, _, rest = name.partition(".")
            full = f"{aliases[head]}.{rest}".rstrip(".") if head in aliases else name
            operation = _call_operation(full)
            if operation:
                add(operation, f"{name}(...)")
            elif isinstance(node.func, ast.Attribute) and node.func.attr in _PATH_METHODS:
                add(_PATH_METHODS[node.func.attr], f"{name}(...)")
            if full in ("open", "io.open", "builtins.open") and _opens_for_writing(node):
                add(FILE_WRITE, "open(..., 'w')")
            if full in ("getattr", "globals", "vars", "locals") and node.args:
                add(DYNAMIC_CODE, f"{full}(...)")
        elif isinstance(node, ast.Attribute) and _dotted(node) in ("os.environ",):
            add(ENVIRONMENT, "os.environ")
    return operations, evidence


def _call_operation(name: str) -> str | None:
    if name in _CALLS:
        return _CALLS[name]
    root = name.split(".")[0]
    if root in _MODULES and root not in ("shutil",):
        return _MODULES[root]
    if name.startswith("shutil."):
        return FILE_DELETE if name == "shutil.rmtree" else FILE_WRITE
    return next((op for prefix, op in _CALL_PREFIXES.items() if name.startswith(prefix)), None)


def _opens_for_writing(call: ast.Call) -> bool:
    mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
    if mode is None:
        return False
    if isinstance(mode, ast.Constant) and isinstance(mode.value, str):
        return any(flag in mode.value for flag in "wax+")
    return True  # a mode computed at run time may well be a write
