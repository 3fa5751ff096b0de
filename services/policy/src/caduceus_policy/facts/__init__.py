"""Facts about one tool call, extracted from its arguments before any rule runs: what packs match on.

`request_facts(tenant, roles, tool, args, workspace_root)` is all a decision needs besides
the pack (the service, `caduceus policy eval` and audit replay call it the same way).
Extraction never raises: arguments it cannot judge (wrong types, too large, too deep,
unpaired surrogates) come back as a `problem`, which every engine turns into a deny.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from caduceus_policy.facts.code import ENVIRONMENT, NETWORK, RISKY_OPERATIONS, code_facts
from caduceus_policy.facts.content import find_secrets, strings_in
from caduceus_policy.facts.paths import (
    HostPaths,
    LexicalPaths,
    PathResolver,
    PathVerdict,
    Workspace,
    holds_secrets,
    normalize,
    runs_later,
)
from caduceus_policy.facts.shell import analyze_command
from caduceus_policy.facts.tools import FILE_WRITE_TOOLS, family_of, mcp_name, shape_problem
from caduceus_policy.facts.urls import NO_LOOKUPS, DnsLookups, NameResolver, url_targets, urls_in_text

# The facts a pack may name in `when:`, with their Cedar types; each is an attribute of the Cedar context.
KNOWN_FACTS: dict[str, str] = {
    "family": "String",
    "path_outside_workspace": "Bool", "writes_outside_workspace": "Bool", "path_symlink_escape": "Bool",
    "writes_run_later": "Bool",
    "touches_secret_file": "Bool", "paths": "Set<String>",
    "binaries": "Set<String>", "command_unreadable": "Bool", "dynamic_command": "Bool", "command_not_understood": "Bool",
    "decode_and_execute": "Bool", "fetch_and_execute": "Bool", "network": "Bool", "destructive": "Bool",
    "privilege_raising": "Bool",
    "url_hosts": "Set<String>", "url_schemes": "Set<String>", "url_classes": "Set<String>",
    "url_private_network": "Bool", "url_cloud_metadata": "Bool",
    "code_language": "String", "code_operations": "Set<String>",
    "mcp_server": "String", "mcp_tool": "String", "mcp_read_only": "Bool", "mcp_destructive": "Bool",
    "memory_write": "Bool", "skill_write": "Bool",
    "secrets_in_args": "Bool", "secret_kinds": "Set<String>", "data_classes": "Set<String>",
    "outbound_data": "Set<String>", "outbound_to": "Set<String>",
    "risky": "Bool",
}
# URL host classes that are not the public internet.
PRIVATE_CLASSES = frozenset({"loopback", "private", "link_local", "metadata", "unspecified", "reserved"})


@dataclass(frozen=True)
class ArgumentLimits:
    """How large and deep arguments may be before policy refuses to judge them (and denies)."""

    max_bytes: int = 512 * 1024
    max_depth: int = 32
    max_items: int = 20_000


DEFAULT_LIMITS = ArgumentLimits()


@dataclass(frozen=True)
class RequestFacts:
    """Everything an engine may look at for one call: who, where, which tool, and derived facts.

    `evidence` says, per fact, what in the arguments made it true (for explanations);
    `problem` says why the arguments cannot be judged at all (the call is then denied).
    """

    tenant: str
    roles: tuple[str, ...]
    tool: str
    args: Mapping[str, Any]
    facts: Mapping[str, Any] = field(default_factory=dict)
    user: str = ""
    workspace: str = ""
    evidence: Mapping[str, str] = field(default_factory=dict)
    problem: str | None = None
    # The person's own approval mode from their session grant (tenants.yaml), when the tenant sets one.
    approval_mode: str | None = None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_surrogate(text: str) -> bool:
    return _SURROGATE.search(text) is not None


def argument_problem(args: object, limits: ArgumentLimits = DEFAULT_LIMITS) -> str | None:
    """Why arguments cannot be judged: not an object, too large, too deep, or text that is not valid UTF-8."""
    if not isinstance(args, Mapping):
        return f"arguments must be a JSON object, not {type(args).__name__}"
    size = items = 0
    stack: list[tuple[object, int]] = [(args, 1)]
    while stack:
        value, depth = stack.pop()
        items += 1
        if depth > limits.max_depth:
            return f"arguments are nested deeper than {limits.max_depth} levels"
        if items > limits.max_items:
            return f"arguments hold more than {limits.max_items} values"
        if isinstance(value, str):
            size += len(value)
            if _has_surrogate(value):
                return "an argument holds text that is not valid UTF-8 (an unpaired surrogate)"
        elif isinstance(value, Mapping):
            for key, inner in value.items():
                if not isinstance(key, str) or _has_surrogate(key):
                    return "an argument name is not valid UTF-8 text"
                size += len(key)
                stack.append((inner, depth + 1))
        elif isinstance(value, list | tuple):
            stack.extend((inner, depth + 1) for inner in value)
        elif isinstance(value, float) and value != value:
            return "an argument is not a number (NaN)"
        if size > limits.max_bytes:
            return f"arguments exceed {limits.max_bytes // 1024} KiB; policy does not judge calls that large"
    return None


def paths_named(tool: str, args: Mapping[str, Any]) -> list[object]:
    """Every file path a call names: its `path` argument and the files of a V4A `patch` body."""
    named: list[object] = []
    if "path" in args and (family_of(tool) == "file" or tool == "patch" or isinstance(args["path"], str)):
        named.append(args["path"])
    for key in ("file_path", "workdir") if tool != "terminal" else ():
        if isinstance(args.get(key), str):
            named.append(args[key])
    patch = args.get("patch")
    if isinstance(patch, str):
        named.extend(_V4A_FILE.findall(patch))
    return named


# File headers of a V4A patch (the `patch` tool's patch mode names its files inside the patch text).
_V4A_FILE = re.compile(r"^\*\*\* (?:Update File|Add File|Delete File|Move to):\s*(.*?)\s*$", re.MULTILINE)


class _Collector:
    """Accumulates facts and their evidence while the extractors run."""

    def __init__(self, workspace: Workspace, names: NameResolver = NO_LOOKUPS) -> None:
        self.facts: dict[str, Any] = {**_EMPTY_FACTS}
        for name in _SET_FACTS:
            self.facts[name] = set()
        self.evidence: dict[str, str] = {}
        self.workspace = workspace
        self.names = names
        self.code_network = False
        self.code_reads: list[str] = []  # data code reads that it could send: "contents of a.txt", "the environment"
        self.code_hosts: list[str] = []

    def flag(self, name: str, evidence: str) -> None:
        self.facts[name] = True
        self.evidence.setdefault(name, evidence[:160])

    def add_path(self, verdict: PathVerdict, *, written: bool) -> None:
        self.facts["paths"].add(verdict.resolved)
        if verdict.outside:
            self.flag("path_outside_workspace", verdict.raw)
            if written:
                self.flag("writes_outside_workspace", verdict.raw)
        if verdict.via_symlink:
            self.flag("path_symlink_escape", f"{verdict.raw} -> {verdict.resolved}")
        if verdict.secret:
            self.flag("touches_secret_file", verdict.raw)
        if written and runs_later(verdict.resolved):
            self.flag("writes_run_later", f"{verdict.raw} (run later by git or a shell)")

    def add_url(self, url: str, default_scheme: str = "") -> None:
        for target in url_targets(url, default_scheme=default_scheme, names=self.names):
            if target.host:
                self.facts["url_hosts"].add(target.host)
            if target.scheme:
                self.facts["url_schemes"].add(target.scheme)
            self.facts["url_classes"].update(target.classes)
            if target.classes & PRIVATE_CLASSES:
                self.flag("url_private_network", url)
            if "metadata" in target.classes:
                self.flag("url_cloud_metadata", url)

    def add_code(self, language: str, code: str) -> None:
        found = code_facts(code, language)
        self.facts["code_operations"].update(found.operations)
        if found.operations:
            self.evidence.setdefault("code_operations", ", ".join(found.evidence)[:160])
        for raw in dict.fromkeys(found.paths_read):
            verdict = self.workspace.check(raw)
            self.add_path(verdict, written=False)
            self.code_reads.append(verdict.contents)
        for raw in dict.fromkeys(found.paths_written):
            self.add_path(self.workspace.check(raw), written=True)
        for host in found.hosts:
            self.add_url(host, "tcp")
            self.code_hosts.append(host)
        if found.reads_files and not found.paths_read:
            self.code_reads.append("file contents")
        if ENVIRONMENT in found.operations:
            self.code_reads.append("the environment")
        self.code_network |= NETWORK in found.operations

    def send(self, data: list[str], destinations: set[str]) -> None:
        """Record data a call sends to destinations outside the workspace, by kind (never the value)."""
        if not destinations:
            return
        self.facts["outbound_to"].update(destinations)
        where = ", ".join(sorted(destinations))[:60]
        for what in data:
            kind = _data_kind(what)
            self.facts["outbound_data"].add(kind)
            shown = f"{what} to {where}"
            previous = self.evidence.get("outbound_data")
            if previous is None or shown not in previous:
                self.evidence["outbound_data"] = (f"{previous}; {shown}" if previous else shown)[:200]


def _data_kind(what: str) -> str:
    """secret, secret_file, environment or file: the kinds of data `outbound_data` names."""
    if what.startswith("secret ("):
        return "secret"
    if "(a secret file)" in what:
        return "secret_file"
    if what == "the environment":
        return "environment"
    return "file"


def _empty(kind: str) -> Any:
    return {"Bool": False, "String": "", "Set<String>": set(), "Long": 0}[kind]


# Every fact before extraction; sets are made anew per call (extraction adds to them).
_EMPTY_FACTS: dict[str, Any] = {name: _empty(kind) for name, kind in KNOWN_FACTS.items()}
_SET_FACTS = tuple(name for name, kind in KNOWN_FACTS.items() if kind == "Set<String>")


def extract_facts(tool: str, args: Mapping[str, Any], workspace: Workspace,
                  names: NameResolver = NO_LOOKUPS) -> tuple[dict[str, Any], dict[str, str]]:
    """The facts of one call (see KNOWN_FACTS) and the evidence for those that hold."""
    found = _Collector(workspace, names)
    shell = None
    family = family_of(tool)
    found.facts["family"] = family
    writes = tool in FILE_WRITE_TOOLS or tool == "skill_manage"
    for path in paths_named(tool, args):
        verdict = workspace.check(path)
        if tool == "search_files" and holds_secrets(normalize(verdict.resolved)):
            verdict = dataclasses.replace(verdict, secret=True)  # searching it reads the secret files below it
        found.add_path(verdict, written=writes)
    if family == "terminal" and isinstance(args.get("command"), str):
        shell = analyze_command(args["command"], workspace, args.get("workdir"))
        facts = found.facts
        facts["binaries"].update(shell.binaries)
        for name in ("dynamic_command", "decode_and_execute", "fetch_and_execute", "network", "destructive",
                     "privilege_raising"):
            if getattr(shell, name):
                found.flag(name, shell.evidence.get(name, args["command"]))
        if shell.problems:
            found.flag("command_unreadable", "; ".join(shell.problems))
        if shell.unmodelled:
            found.flag("command_not_understood", "; ".join(shell.unmodelled))
        written = {id(verdict) for verdict in shell.written}  # every written path is also in shell.paths
        for verdict in shell.paths:
            found.add_path(verdict, written=id(verdict) in written)
        for url, scheme in shell.urls:
            found.add_url(url, scheme)
        for language, code in shell.inline_code:
            found.add_code(language, code)
    if family == "code" and isinstance(args.get("code"), str):
        language = args.get("language") if isinstance(args.get("language"), str) else "python"
        found.facts["code_language"] = language
        found.add_code(language, args["code"])
    name = mcp_name(tool)
    if name is not None:
        found.facts["mcp_server"], found.facts["mcp_tool"] = name.server, name.tool
        found.facts["mcp_destructive"] = True  # MCP's default for a tool that does not say otherwise
    found.facts["memory_write"] = family == "memory"
    found.facts["skill_write"] = tool == "skill_manage"
    texts = list(strings_in(args))
    for text in texts:
        for url in urls_in_text(text):
            found.add_url(url)
    for key in ("url", "image_url"):
        if isinstance(args.get(key), str):
            found.add_url(args[key], "http")
    kinds = find_secrets(texts)
    if kinds:
        found.facts["secret_kinds"] = set(kinds)
        found.flag("secrets_in_args", ", ".join(kinds))
    _outbound(found, family, tool, shell, kinds)
    return found.facts, found.evidence


def _outbound(found: _Collector, family: str, tool: str, shell: Any, secret_kinds: list[str]) -> None:
    """What the call sends outside the workspace, and where: web and browser tools and MCP tools send their
    arguments; network commands send the files and data piped or uploaded; code with network operations can send
    whatever it reads."""
    facts = found.facts
    hosts = set(facts["url_hosts"])
    secrets = [f"secret ({', '.join(secret_kinds)})"] if secret_kinds else []
    if family == "web":
        found.send(secrets, hosts or {tool})
    elif family == "mcp":
        found.send(secrets, {f"MCP server {facts['mcp_server'] or tool}"})
    if shell is not None and facts["network"]:
        found.send([*secrets, *shell.uploads], hosts or {"the network"})
    if found.code_network:
        found.send([*secrets, *found.code_reads], set(found.code_hosts) or hosts or {"the network"})


@functools.lru_cache(maxsize=1)
def _host_dns() -> DnsLookups:
    """One DNS cache per process."""
    return DnsLookups()


def is_risky(facts: Mapping[str, Any]) -> str | None:
    """The first fact that makes a call risky (for ask-when-risky approvals), or None."""
    for name in ("destructive", "privilege_raising", "decode_and_execute", "fetch_and_execute", "dynamic_command",
                 "command_unreadable", "command_not_understood", "writes_run_later", "path_outside_workspace",
                 "touches_secret_file", "url_private_network",
                 "secrets_in_args", "skill_write"):
        if facts.get(name):
            return name
    if set(facts.get("code_operations", ())) & RISKY_OPERATIONS:
        return "code_operations"
    if facts.get("outbound_data"):
        return "outbound_data"
    if facts.get("family") == "mcp" and facts.get("mcp_destructive"):
        return "mcp_destructive"
    if facts.get("data_classes"):
        return "data_classes"
    return None


def request_facts(
    tenant: str, roles: tuple[str, ...], tool: str, args: Mapping[str, Any], workspace_root: PurePosixPath | str,
    *, user: str = "", workspace: str = "", resolver: PathResolver | None = None,
    limits: ArgumentLimits = DEFAULT_LIMITS, approval_mode: str | None = None, names: NameResolver | None = None,
) -> RequestFacts:
    """Bundle who, which tool and the extracted facts for an engine (never raises on bad arguments).

    Where paths are resolved on this host (`HostPaths`: the service, `caduceus policy eval`), host names in URLs
    are resolved too, unless `names` says otherwise; elsewhere (audit replay) names are read as written.
    """
    problem = argument_problem(args, limits) or shape_problem(tool, args)
    if problem is not None:
        return RequestFacts(tenant=tenant, roles=tuple(roles), tool=tool, args=args if isinstance(args, Mapping)
                            else {}, user=user, workspace=workspace, problem=problem,
                            approval_mode=approval_mode)
    try:
        if names is None:
            names = _host_dns() if isinstance(resolver, HostPaths) else NO_LOOKUPS
        facts, evidence = extract_facts(tool, args, Workspace.at(workspace_root, resolver), names)
    except RecursionError:
        return RequestFacts(tenant=tenant, roles=tuple(roles), tool=tool, args=args, user=user, workspace=workspace,
                            problem="arguments are nested too deeply to read", approval_mode=approval_mode)
    risky = is_risky(facts)
    if risky:
        facts["risky"] = True
        evidence.setdefault("risky", f"{risky}: {evidence.get(risky, '')}".rstrip(": "))
    return RequestFacts(tenant=tenant, roles=tuple(roles), tool=tool, args=args, facts=facts, user=user,
                        workspace=workspace, evidence=evidence, approval_mode=approval_mode)


__all__ = [
    "DEFAULT_LIMITS", "KNOWN_FACTS", "ArgumentLimits", "HostPaths", "LexicalPaths", "RequestFacts", "Workspace",
    "argument_problem", "extract_facts", "is_risky", "request_facts",
]
