"""What code run by `execute_code` (or `python -c`, `perl -e` ... in a terminal) may do.

Python is parsed (never run) and its imports and calls are mapped to risky operations, the
files it opens or writes, the hosts it connects to and whether it reads the environment.
Indirection the reader cannot follow (`getattr` with a computed name, `sys.modules[...]`,
`__subclasses__()` walks, `__builtins__`) is `unreadable`, which packs treat as risky.
Other languages, and Python that does not parse, are matched by the names of the same
operations in their text, erring towards risky. The result is a set of operation names a
pack can match on, plus `CodeFacts` for paths, hosts and data read.
"""

from __future__ import annotations

import ast
import posixpath
import re
from dataclasses import dataclass, field

from caduceus_policy.facts.paths import looks_secret

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
    "os.makedirs": FILE_WRITE, "os.symlink": FILE_WRITE, "os.link": FILE_WRITE, "os.environb": ENVIRONMENT,
    "asyncio.create_subprocess_exec": PROCESS, "asyncio.create_subprocess_shell": PROCESS, "os.forkpty": PROCESS,
    "os.execv": PROCESS, "importlib.import_module": DYNAMIC_CODE, "runpy.run_path": DYNAMIC_CODE,
    "runpy.run_module": DYNAMIC_CODE, "builtins.exec": DYNAMIC_CODE, "builtins.eval": DYNAMIC_CODE,
    "os.pipe": PROCESS, "signal.signal": PROCESS, "atexit.register": DYNAMIC_CODE,
}
# Attributes and names through which code reaches what it does not name: the reader cannot follow them.
_INDIRECT_ATTRIBUTES = frozenset({"__subclasses__", "__globals__", "__builtins__", "__dict__", "__getattribute__",
                                  "__class__", "__mro__", "__bases__", "__base__", "__code__", "__closure__",
                                  "__reduce__", "__reduce_ex__", "__loader__", "__spec__", "__import__", "__func__",
                                  "__self__", "__init_subclass__", "__getattr__", "f_globals", "f_locals",
                                  "f_builtins", "gi_frame", "cr_frame", "tb_frame", "f_back"})
_INDIRECT_NAMES = frozenset({"__builtins__", "builtins", "__loader__", "__spec__"})
_METHOD_PROCESSES = frozenset({"subprocess_exec", "subprocess_shell", "system", "popen", "Popen", "spawn"})
_NETWORK_CALLS = frozenset({"connect", "connect_ex", "create_connection", "sendto", "HTTPConnection",
                            "HTTPSConnection", "open_connection", "urlopen", "Request", "get", "post", "put",
                            "request", "FTP", "SMTP", "Telnet"})
_OPENERS = frozenset({"open", "io.open", "builtins.open", "codecs.open", "os.open", "pathlib.Path", "Path",
                      "pathlib.PurePath", "os.path.expanduser", "os.fdopen", "tarfile.open", "zipfile.ZipFile",
                      "shutil.copy", "shutil.copyfile", "shutil.copy2", "shutil.copytree", "shutil.move",
                      "shutil.make_archive", "os.listdir", "os.scandir", "os.walk", "glob.glob", "os.stat"})
_WRITE_METHODS = frozenset({"write_text", "write_bytes", "touch", "mkdir", "symlink_to", "hardlink_to", "unlink",
                            "rmdir", "rename", "replace", "chmod"})
_READ_METHODS = frozenset({"read_text", "read_bytes", "open", "iterdir", "glob", "rglob"})
_HOST = re.compile(r"^(?:\[?[0-9A-Fa-f:.]+\]?|localhost|[\w-]+(?:\.[\w-]+)+)$")
_QUOTED = re.compile(r"""(["'])((?:(?!\1)[^\\\n]|\\.){1,300})\1""")


@dataclass
class CodeFacts:
    """What code does, as far as reading it can tell: operations, evidence, paths, hosts, data it reads."""

    operations: set[str] = field(default_factory=set)
    evidence: list[str] = field(default_factory=list)
    paths_read: list[str] = field(default_factory=list)
    paths_written: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    reads_files: bool = False

    def add(self, operation: str, what: str) -> None:
        if operation not in self.operations:
            self.evidence.append(what)
        self.operations.add(operation)
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
    facts = code_facts(code, language)
    return facts.operations, facts.evidence


def code_facts(code: str, language: str = "python") -> CodeFacts:
    """Operations, paths, hosts and data reads of `code` (Python from its syntax tree, others from their text)."""
    if language.lower().startswith("python"):
        try:
            tree = ast.parse(code)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            facts = _text_facts(code)
            facts.add(UNREADABLE, "Python that does not parse")
            return facts
        try:
            return _python_facts(tree)
        except RecursionError:
            facts = _text_facts(code)
            facts.add(UNREADABLE, "Python nested too deeply to read")
            return facts
    return _text_facts(code)


def _text_facts(code: str) -> CodeFacts:
    """Another language's code (or Python that does not parse): operations by name, quoted paths as paths read."""
    operations, evidence = _text_operations(code)
    facts = CodeFacts(operations=operations, evidence=evidence)
    for match in _QUOTED.finditer(code):
        text = match.group(2)
        if ("/" in text or text.startswith((".", "~"))) and "://" not in text and " " not in text:
            facts.paths_read.append(text)
    if re.search(r"\b(?:ENV|getenv|environ|process\.env|\$_ENV|%ENV)\b", code):
        facts.add(ENVIRONMENT, "environment")
    facts.reads_files = bool(facts.paths_read) or bool(re.search(r"\b(?:open|read|File\.|fs\.read)", code))
    return facts


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


def _python_facts(tree: ast.AST) -> CodeFacts:
    facts = CodeFacts()
    add = facts.add
    aliases: dict[str, str] = {}

    def full_name(node: ast.AST) -> str:
        name = _dotted(node)
        head, _, rest = name.partition(".")
        return f"{aliases[head]}.{rest}".rstrip(".") if head in aliases else name

    nodes = list(ast.walk(tree))
    assigned: dict[str, ast.expr | None] = {}  # names given one value (None: several), for folding paths
    for node in nodes:  # aliases first: `s = os.system` may come before or after its use in the walk order
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target = node.targets[0].id
            assigned[target] = node.value if target not in assigned else None
            if isinstance(node.value, ast.Attribute | ast.Name) and _dotted(node.value):
                aliases[node.targets[0].id] = _dotted(node.value)
            elif isinstance(node.value, ast.Call) and _dotted(node.value.func) in ("__import__",
                                                                                  "importlib.import_module") \
                    and node.value.args and isinstance(node.value.args[0], ast.Constant):
                aliases[node.targets[0].id] = str(node.value.args[0].value)
            elif isinstance(node.value, ast.Call) and _dotted(node.value.func) == "getattr" and \
                    len(node.value.args) >= 2 and isinstance(node.value.args[1], ast.Constant):
                aliases[node.targets[0].id] = f"{_dotted(node.value.args[0])}.{node.value.args[1].value}"
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else \
                    alias.name.split(".")[0]
                root = alias.name.split(".")[0]
                if root in _MODULES:
                    add(_MODULES[root], f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            if root in _MODULES:
                add(_MODULES[root], f"from {node.module} import ...")
            elif root in ("os", "asyncio", "importlib", "runpy", "builtins"):
                for alias in node.names:
                    operation = _call_operation(f"{node.module}.{alias.name}")
                    if operation:
                        add(operation, f"from {node.module} import {alias.name}")
        elif isinstance(node, ast.Call):
            _python_call(node, full_name(node.func), _dotted(node.func), facts,
                         lambda value: _fold(value, assigned, full_name, 0))
        elif isinstance(node, ast.Attribute):
            if node.attr in _INDIRECT_ATTRIBUTES:
                add(UNREADABLE, f".{node.attr}")
            dotted = full_name(node)
            if dotted in ("os.environ", "os.environb"):
                add(ENVIRONMENT, dotted)
            elif dotted == "sys.modules":
                add(UNREADABLE, "sys.modules")
        elif isinstance(node, ast.Name) and node.id in _INDIRECT_NAMES:
            add(UNREADABLE, node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _secret_like_path(node.value):
            facts.paths_read.append(node.value)  # a credential store named anywhere is a credential store read
    return facts


def _fold(node: ast.AST, assigned: dict[str, ast.expr | None], full_name, depth: int) -> str | None:  # type: ignore[no-untyped-def]
    """A string expression's value when reading can know it: constants, `+`, f-strings of constants, names
    assigned once, os.path.join, Path(...) and `/`, joinpath, `~` for the home directory; else None."""
    if depth > 8:
        return None
    fold = lambda inner: _fold(inner, assigned, full_name, depth + 1)  # noqa: E731
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        value = assigned.get(node.id)
        return fold(value) if value is not None else None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Div):
        left, right = fold(node.left), fold(node.right)
        if left is None or right is None:
            return None
        return left + right if isinstance(node.op, ast.Add) else posixpath.join(left, right)
    if isinstance(node, ast.JoinedStr):
        parts = [fold(v.value if isinstance(v, ast.FormattedValue) else v) for v in node.values]
        return None if None in parts else "".join(p for p in parts if p is not None)
    if isinstance(node, ast.Subscript) and full_name(node.value) == "os.environ" and fold(node.slice) == "HOME":
        return "~"
    if isinstance(node, ast.Call):
        called = full_name(node.func)
        if called in ("os.getenv", "os.environ.get") and node.args and fold(node.args[0]) == "HOME":
            return "~"
        if called.endswith(("Path.home", "os.path.expanduser")) and not node.args:
            return "~"
        parts = [fold(a) for a in node.args]
        if isinstance(node.func, ast.Attribute) and node.func.attr == "joinpath":
            parts = [fold(node.func.value), *parts]
        elif called not in ("os.path.join", "pathlib.Path", "Path", "pathlib.PurePath", "os.path.expanduser",
                            "os.path.abspath", "os.path.normpath", "str"):
            return None
        known = [part for part in parts if part is not None]
        return posixpath.join(*known) if known and len(known) == len(parts) else None
    return None


def _python_call(node: ast.Call, full: str, name: str, facts: CodeFacts, fold) -> None:  # type: ignore[no-untyped-def]
    add = facts.add
    if full in ("getattr", "builtins.getattr") and len(node.args) >= 2:
        attribute = node.args[1]
        if isinstance(attribute, ast.Constant) and isinstance(attribute.value, str):
            full = f"{_dotted(node.args[0])}.{attribute.value}"
            if attribute.value in _INDIRECT_ATTRIBUTES:
                add(UNREADABLE, f"getattr(..., {attribute.value!r})")
        else:
            add(UNREADABLE, "getattr(...) with a computed name")
    elif full in ("__import__", "importlib.import_module") and node.args:
        module = node.args[0]
        add(DYNAMIC_CODE, f"{full}(...)")
        if isinstance(module, ast.Constant) and isinstance(module.value, str):
            root = module.value.split(".")[0]
            if root in _MODULES:
                add(_MODULES[root], f"{full}({module.value!r})")
            if root in ("os", "sys", "builtins", "posix", "nt"):
                add(UNREADABLE, f"{full}({module.value!r})")
        else:
            add(UNREADABLE, f"{full}(...) of a computed module")
    operation = _call_operation(full)
    if operation:
        add(operation, f"{name}(...)")
    elif isinstance(node.func, ast.Attribute) and node.func.attr in _PATH_METHODS:
        add(_PATH_METHODS[node.func.attr], f"{name}(...)")
    elif isinstance(node.func, ast.Attribute) and node.func.attr in _METHOD_PROCESSES:
        add(PROCESS, f"{name}(...)")
    if full in ("getattr", "globals", "vars", "locals", "setattr", "delattr") and node.args:
        add(DYNAMIC_CODE, f"{full}(...)")
    if full in ("os.getenv", "os.environ.get", "os.getenvb"):
        add(ENVIRONMENT, f"{full}(...)")
    constants = [value for a in node.args if (value := fold(a)) is not None] if name != "getattr" else []
    if full in _OPENERS or full.startswith(("os.", "shutil.")) and operation in (FILE_WRITE, FILE_DELETE, PRIVILEGE):
        writes = full in ("open", "io.open", "builtins.open", "codecs.open") and _opens_for_writing(node) or \
            full.startswith(("shutil.", "os.")) and (operation in (FILE_WRITE, FILE_DELETE))
        if writes:
            add(FILE_WRITE, f"{name}(..., 'w')" if full.endswith("open") else f"{name}(...)")
            two_paths = full.startswith("shutil.") or full in ("os.rename", "os.replace", "os.link", "os.symlink")
            facts.paths_written.extend(constants[-1:] if two_paths else constants[:1])
            facts.paths_read.extend(constants[:-1] if two_paths else [])
        else:
            facts.paths_read.extend(constants[:1])
            facts.reads_files = True
    if isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Call | ast.BinOp | ast.Name):
        inner = node.func.value  # Path("x").write_text(...), (Path.home() / ".aws").read_text(), open("x").read()
        inner_path = fold(inner)
        inner_constants = [inner_path] if inner_path is not None else \
            [value for a in getattr(inner, "args", ()) if (value := fold(a)) is not None]
        if node.func.attr in _WRITE_METHODS:
            facts.paths_written.extend(inner_constants[:1])
        elif node.func.attr in _READ_METHODS or node.func.attr in ("read", "readlines", "readline"):
            facts.paths_read.extend(inner_constants[:1])
            facts.reads_files = True
    if (isinstance(node.func, ast.Attribute) and node.func.attr in _NETWORK_CALLS or operation == NETWORK) and \
            (operation == NETWORK or isinstance(node.func, ast.Attribute) and node.func.attr in
             ("connect", "connect_ex", "create_connection", "sendto", "open_connection")):
        for argument in node.args:
            values = argument.elts if isinstance(argument, ast.Tuple) else [argument]
            for value in values:
                if isinstance(value, ast.Constant) and isinstance(value.value, str) and \
                        _HOST.match(value.value.strip()):
                    facts.hosts.append(value.value.strip())
        add(NETWORK, f"{name}(...)")


def _secret_like_path(text: str) -> bool:
    return len(text) < 300 and "\n" not in text and looks_secret(text)


def _call_operation(name: str) -> str | None:
    if name in _CALLS:
        return _CALLS[name]
    root = name.split(".")[0]
    if root == "sys" and name in ("sys.modules",):
        return UNREADABLE
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
