"""The MCP registry: per tenant, the upstream servers, where they may be used, who approves their tools.

Pure domain: parse and check the YAML (every problem at once, each with its line), answer which servers a
tenant's workspace may use, and write the file back. No I/O beyond reading and writing the one file.

    tenants:
      acme:
        servers:
          files:
            scope: {workspaces: [default]}    # or: tenant
            command: [python, -m, files_server]   # stdio; or  url: http://host/mcp  (streamable HTTP)
            approvers: admin                  # the group that approves first use and changed definitions
            pin: tenant                       # pins per tenant (default) or per workspace
            credentials:                      # secret references, resolved by the gateway only
              env: {FILES_TOKEN: files-token}
              headers: {Authorization: "Bearer {files-token}"}
            timeout_s: 30
            max_result_bytes: 100000
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from caduceus_contracts.subjects import TOKEN_RE

# A server's name becomes part of `mcp__<server>__<tool>`: no double underscore, so the name splits one way.
SERVER_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]|_(?!_)){0,40}$")
SECRET_REF_RE = re.compile(r"\{([a-z0-9][a-z0-9_.-]{0,62})\}")
SECRET_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
TOOL_PREFIX = "mcp__"
SERVER_KEYS = {"scope", "command", "url", "env", "approvers", "pin", "credentials", "timeout_s", "max_result_bytes",
               "description"}


class RegistryError(ValueError):
    """The registry file cannot be used; `problems` lists every one, each `line N: what` (all at once)."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{source}: " + ("\n  " if len(problems) > 1 else "") + "\n  ".join(problems))


@dataclass(frozen=True)
class Credentials:
    """Secret references: the environment of a stdio server and the headers of an HTTP one. Values name
    secrets (`{name}` inside a header, or a bare name for an environment variable), never hold them."""

    env: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def secret_names(self) -> tuple[str, ...]:
        names = list(self.env.values())
        for template in self.headers.values():
            names += SECRET_REF_RE.findall(template)
        return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class Server:
    """One upstream MCP server registered for a tenant."""

    tenant: str
    name: str
    transport: Literal["stdio", "http"]
    command: tuple[str, ...] = ()
    url: str = ""
    env: dict[str, str] = field(default_factory=dict)
    workspaces: tuple[str, ...] | None = None  # None: the whole tenant
    approvers: str = "admin"
    pin_scope: Literal["tenant", "workspace"] = "tenant"
    credentials: Credentials = field(default_factory=Credentials)
    timeout_s: float | None = None
    max_result_bytes: int | None = None
    description: str = ""

    def serves(self, workspace: str) -> bool:
        return self.workspaces is None or workspace in self.workspaces

    @property
    def scope(self) -> str:
        return "tenant" if self.workspaces is None else "workspaces:" + ",".join(self.workspaces)

    @property
    def target(self) -> str:
        return " ".join(self.command) if self.transport == "stdio" else self.url

    def pin_workspace(self, workspace: str) -> str:
        """The workspace a pin of this server's tools is kept under ("" for the whole tenant)."""
        return workspace if self.pin_scope == "workspace" else ""

    def to_yaml(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scope": "tenant" if self.workspaces is None else {"workspaces": list(self.workspaces)}}
        if self.transport == "stdio":
            out["command"] = list(self.command)
            if self.env:
                out["env"] = dict(self.env)
        else:
            out["url"] = self.url
        out["approvers"] = self.approvers
        if self.pin_scope != "tenant":
            out["pin"] = self.pin_scope
        creds = {k: v for k, v in (("env", self.credentials.env), ("headers", self.credentials.headers)) if v}
        if creds:
            out["credentials"] = creds
        for key in ("timeout_s", "max_result_bytes"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.description:
            out["description"] = self.description
        return out


def tool_name(server: str, tool: str) -> str:
    """The governed name the planner and policy see: `mcp__<server>__<tool>`."""
    return f"{TOOL_PREFIX}{server}__{tool}"


def split_tool_name(name: str) -> tuple[str, str] | None:
    """(server, tool) of `mcp__<server>__<tool>`, or None for a name that is not an MCP tool."""
    if not name.startswith(TOOL_PREFIX):
        return None
    server, sep, tool = name[len(TOOL_PREFIX):].partition("__")
    return (server, tool) if sep and server and tool else None


@dataclass(frozen=True)
class Registry:
    """Every tenant's registered servers."""

    servers: dict[str, dict[str, Server]] = field(default_factory=dict)

    def for_workspace(self, tenant: str, workspace: str) -> list[Server]:
        return [s for s in self.servers.get(tenant, {}).values() if s.serves(workspace)]

    def server(self, tenant: str, name: str) -> Server | None:
        return self.servers.get(tenant, {}).get(name)

    def with_server(self, server: Server) -> Registry:
        tenants = {t: dict(s) for t, s in self.servers.items()}
        tenants.setdefault(server.tenant, {})[server.name] = server
        return Registry(tenants)

    def without_server(self, tenant: str, name: str) -> Registry:
        tenants = {t: {n: s for n, s in servers.items() if (t, n) != (tenant, name)} for t, servers in self.servers.items()}
        return Registry({t: s for t, s in tenants.items() if s})

    def to_yaml(self) -> str:
        data = {"tenants": {t: {"servers": {n: s.to_yaml() for n, s in sorted(servers.items())}}
                            for t, servers in sorted(self.servers.items())}}
        header = ("# The MCP gateway's registry: per tenant, the upstream MCP servers. Edit with `caduceus mcp servers`\n"
                  "# or by hand; the gateway reloads it when it changes. Credentials are secret names, never values.\n")
        return header + yaml.safe_dump(data, sort_keys=False)


def load_registry(path: Path) -> Registry:
    """The registry in `path` (an absent file is an empty registry). Raises RegistryError listing every problem."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Registry()
    return parse_registry(text, str(path))


def save_registry(path: Path, registry: Registry) -> None:
    """Write the registry atomically (the gateway never reads half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".yaml.partial")
    partial.write_text(registry.to_yaml())
    partial.replace(path)


def parse_registry(text: str, source: str = "mcp.yaml") -> Registry:
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise RegistryError(source, [f"{line}not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    problems: list[str] = []
    servers: dict[str, dict[str, Server]] = {}
    if root is None:
        return Registry()
    top = _mapping(root, "the file", problems)
    for key in top:
        if key.value != "tenants":
            problems.append(f"line {_line(key)}: unknown key {key.value!r} (the file has one key: tenants)")
    tenants_node = next((v for k, v in top.items() if k.value == "tenants"), None)
    if tenants_node is None:
        return Registry() if not problems else _fail(source, problems)
    for tenant_key, tenant_node in _mapping(tenants_node, "tenants", problems).items():
        tenant = str(tenant_key.value)
        if not TOKEN_RE.fullmatch(tenant):
            problems.append(f"line {_line(tenant_key)}: tenant {tenant!r} is not a valid tenant name")
            continue
        body = _mapping(tenant_node, f"tenant {tenant}", problems)
        for key in body:
            if key.value != "servers":
                problems.append(f"line {_line(key)}: unknown key {key.value!r} under tenant {tenant} (expected servers)")
        servers_node = next((v for k, v in body.items() if k.value == "servers"), None)
        if servers_node is None:
            continue
        for name_key, server_node in _mapping(servers_node, f"{tenant}'s servers", problems).items():
            server = _server(tenant, name_key, server_node, problems)
            if server is not None:
                servers.setdefault(tenant, {})[server.name] = server
    if problems:
        _fail(source, problems)
    return Registry(servers)


def _fail(source: str, problems: list[str]) -> Registry:
    raise RegistryError(source, problems)


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _mapping(node: yaml.Node, what: str, problems: list[str]) -> dict[yaml.ScalarNode, yaml.Node]:
    if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
        return {}  # an empty section
    if not isinstance(node, yaml.MappingNode):
        problems.append(f"line {_line(node)}: {what} must be a mapping")
        return {}
    seen: dict[str, int] = {}
    out: dict[yaml.ScalarNode, yaml.Node] = {}
    for key, value in node.value:
        if key.value in seen:
            problems.append(f"line {_line(key)}: {key.value!r} appears twice in {what} (first on line {seen[key.value]})")
            continue
        seen[key.value] = _line(key)
        out[key] = value
    return out


def _plain(node: yaml.Node) -> Any:
    return yaml.safe_load(yaml.serialize(node))


def _server(tenant: str, name_key: yaml.ScalarNode, node: yaml.Node, problems: list[str]) -> Server | None:
    name = str(name_key.value)
    at = f"line {_line(name_key)}"
    before = len(problems)
    if not SERVER_RE.fullmatch(name):
        problems.append(f"{at}: server name {name!r}: use lowercase letters, digits, '-' or single '_' (no '__'), "
                        "at most 41")
    fields = _mapping(node, f"server {name}", problems)
    values = {k.value: (k, v) for k, v in fields.items()}
    for key in fields:
        if key.value not in SERVER_KEYS:
            problems.append(f"line {_line(key)}: unknown key {key.value!r} in server {name} "
                            f"(known: {', '.join(sorted(SERVER_KEYS))})")

    def get(key: str) -> tuple[int, Any] | None:
        if key not in values:
            return None
        k, v = values[key]
        return _line(k), _plain(v)

    command, url = get("command"), get("url")
    transport: Literal["stdio", "http"] = "stdio"
    argv: tuple[str, ...] = ()
    if (command is None) == (url is None):
        problems.append(f"{at}: server {name} needs exactly one of command (a stdio server) or url (streamable HTTP)")
    elif command is not None:
        line, value = command
        if isinstance(value, str):
            value = value.split()
        if not (isinstance(value, list) and value and all(isinstance(p, str) and p for p in value)):
            problems.append(f"line {line}: command of {name} must be a non-empty list of strings")
        else:
            argv = tuple(value)
    else:
        transport = "http"
        line, value = url
        if not (isinstance(value, str) and re.match(r"^https?://[^\s/]+", value)):
            problems.append(f"line {line}: url of {name} must be an http:// or https:// URL, got {value!r}")

    workspaces: tuple[str, ...] | None = None
    scope = get("scope")
    if scope is not None:
        line, value = scope
        if value == "tenant":
            pass
        elif isinstance(value, dict) and set(value) == {"workspaces"} and isinstance(value["workspaces"], list) \
                and value["workspaces"] and all(isinstance(w, str) and TOKEN_RE.fullmatch(w) for w in value["workspaces"]):
            workspaces = tuple(value["workspaces"])
        else:
            problems.append(f"line {line}: scope of {name} must be `tenant` or `{{workspaces: [name, ...]}}` "
                            "with valid workspace names")

    env: dict[str, str] = {}
    if (found := get("env")) is not None:
        line, value = found
        if transport != "stdio":
            problems.append(f"line {line}: env is for stdio servers; {name} is reached by url")
        elif not _str_map(value):
            problems.append(f"line {line}: env of {name} must map variable names to strings")
        else:
            env = dict(value)

    approvers = "admin"
    if (found := get("approvers")) is not None:
        line, value = found
        if not (isinstance(value, str) and TOKEN_RE.fullmatch(value)):
            problems.append(f"line {line}: approvers of {name} must name one group (e.g. admin)")
        else:
            approvers = value

    pin_scope: Literal["tenant", "workspace"] = "tenant"
    if (found := get("pin")) is not None:
        line, value = found
        if value not in ("tenant", "workspace"):
            problems.append(f"line {line}: pin of {name} must be tenant or workspace, got {value!r}")
        else:
            pin_scope = value

    credentials = Credentials()
    if (found := get("credentials")) is not None:
        credentials = _credentials(name, transport, *found, problems)

    numbers: dict[str, Any] = {}
    for key, kind, low in (("timeout_s", (int, float), 0), ("max_result_bytes", (int,), 100)):
        if (found := get(key)) is not None:
            line, value = found
            if isinstance(value, bool) or not isinstance(value, kind) or value <= low:
                problems.append(f"line {line}: {key} of {name} must be a number above {low}")
            else:
                numbers[key] = value
    description = ""
    if (found := get("description")) is not None:
        description = str(found[1])

    if len(problems) > before:
        return None
    return Server(tenant=tenant, name=name, transport=transport, command=argv, url=url[1] if url else "", env=env,
                  workspaces=workspaces, approvers=approvers, pin_scope=pin_scope, credentials=credentials,
                  description=description, **numbers)


def _str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _credentials(name: str, transport: str, line: int, value: Any, problems: list[str]) -> Credentials:
    if not isinstance(value, dict) or not set(value) <= {"env", "headers"}:
        problems.append(f"line {line}: credentials of {name} take env (stdio) and headers (HTTP)")
        return Credentials()
    env, headers = value.get("env") or {}, value.get("headers") or {}
    if not _str_map(env) or not _str_map(headers):
        problems.append(f"line {line}: credentials of {name}: env and headers map names to secret references")
        return Credentials()
    if env and transport != "stdio":
        problems.append(f"line {line}: credentials.env is for stdio servers; {name} is reached by url (use headers)")
    if headers and transport != "http":
        problems.append(f"line {line}: credentials.headers is for HTTP servers; {name} is a stdio server (use env)")
    for variable, secret in env.items():
        if not SECRET_NAME_RE.fullmatch(secret):
            problems.append(f"line {line}: credentials.env.{variable} of {name} must name a secret, got {secret!r}")
    for header, template in headers.items():
        if not SECRET_REF_RE.search(template):
            problems.append(f"line {line}: credentials.headers.{header} of {name} must refer to a secret as "
                            "{name} (a value written here would be stored in plain text)")
    return Credentials(env=dict(env), headers=dict(headers))
