"""Reading a policy pack (YAML, with raw Cedar beside it) and checking every field.

Every error names the file, the line, what is wrong and what to write instead, in one
line, so an operator can fix a pack from the message `caduceus policy check` prints.
A pack is read from files on disk or from the same files as published to the bus.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from caduceus_contracts import subjects
from caduceus_policy.facts import KNOWN_FACTS
from caduceus_policy.facts.content import Classifier
from caduceus_policy.pack.model import (
    Approval,
    Guardrail,
    Limit,
    McpAnnotations,
    ModelPolicy,
    ModelRoute,
    Pack,
    RawCedar,
    Rule,
    Source,
    TenantPolicy,
    TestCase,
)

ALL_TENANTS = "*"  # a pack of raw Cedar alone applies to every tenant (its policies can test context.tenant)
APPROVAL_KEYS = ("approvers", "quorum", "timeout", "escalate_to", "escalate_after", "remind_every", "self_approval")
RULE_KEYS = ("id", "effect", "tools", "roles", "users", "when", "unless", "reason", *APPROVAL_KEYS)
TENANT_KEYS = ("rules", "approvals", "approval_modes", "classifiers", "mcp_servers", "limits", "cedar", "models",
               "guardrails")
MODELS_KEYS = ("default", "routes", "prompt_rules", "response_rules")
ROUTE_KEYS = ("id", "upstream", "roles", "workspaces", "data_classes")
TOP_KEYS = ("version", "tenants", "tests")
GUARDRAIL_KEYS = ("id", "roles", "workspaces", "model_calls", "tool_calls", "tokens", "wall_time", "same_call",
                  "same_failing_call")
GUARDRAIL_COUNTS = ("model_calls", "tool_calls", "tokens", "same_call", "same_failing_call")
LIMIT_KEYS = ("id", "tools", "roles", "per", "max_calls", "max_tokens", "max_cost_usd", "window")
TEST_KEYS = ("name", "tenant", "user", "roles", "workspace", "tool", "args", "expect", "expect_ids", "prompt",
             "expect_upstream", "turn")
# A test's `turn:`: what the call's turn did before it (`ran` is a duration, the rest counts).
TURN_KEYS = ("tool_calls", "model_calls", "tokens", "ran", "same_call", "same_failed")
OPERATORS = ("any_of", "all_in", "none_of", "not_all_in", "like", "empty")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_TOOL_GLOB = re.compile(r"^[A-Za-z0-9_.*-]{1,256}$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$")
_NESTED_QUANTIFIER = re.compile(r"\((?:[^()\\]|\\.)*[+*](?:[^()\\]|\\.)*\)\s*[+*{]")
MAX_PATTERN_LENGTH = 500
T = TypeVar("T")


class PackError(ValueError):
    """A pack cannot be used; the message names the file, the line and the fix."""


class _Mapping(dict):
    """A YAML mapping that remembers its line and the line of each key."""

    line: int = 0
    key_lines: dict[Any, int]


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _Mapping:
    mapping = _Mapping()
    mapping.line = node.start_mark.line + 1
    mapping.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            raise PackError(f"{loader.name}:{key_node.start_mark.line + 1}: `{key}` is given twice in the same "
                            "mapping; keep one (YAML would silently drop the first)")
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.key_lines[key] = key_node.start_mark.line + 1
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml(text: str, name: str) -> Any:
    loader = _Loader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc
        raise PackError(f"{name}{line}: not valid YAML: {problem}") from None
    finally:
        loader.dispose()


def parse_duration(value: Any) -> float | None:
    """Seconds from `90`, `30s`, `15m`, `24h`, `7d`; None when it is not a duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value > 0 else None
    if isinstance(value, str) and (match := _DURATION.match(value.strip())):
        seconds = float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2) or "s"]
        return seconds if seconds > 0 else None
    return None


# --- reading files ---------------------------------------------------------------------------


def read_pack_files(path: Path) -> dict[str, str]:
    """The files of a pack on disk, by name: one YAML or Cedar file (with the Cedar files a YAML names), or a
    directory of them. Raises PackError when nothing usable is there."""
    def read(file: Path) -> str:
        try:
            return file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise PackError(f"{file}: not found: give the path of a policy pack (a .yaml or .cedar file, or a "
                            "directory of them); the embedded stack keeps its pack at <state dir>/policy.yaml") from None
        except UnicodeDecodeError as exc:
            raise PackError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
        except OSError as exc:
            raise PackError(f"{file}: cannot be read: {exc.strerror}") from None

    if path.is_dir():
        names = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".cedar") and
                       not p.name.endswith((".tests.yaml", ".tests.yml")))
        if not names:
            raise PackError(f"{path}: the directory holds no .yaml or .cedar files: put the pack's files there")
        return {p.name: read(p) for p in names}
    files = {path.name: read(path)}
    if path.suffix in (".yaml", ".yml"):
        for name in _cedar_references(files[path.name]):
            files[name] = read(path.parent / name)
    return files


def _cedar_references(text: str) -> list[str]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return []
    names: list[str] = []
    tenants = data.get("tenants") if isinstance(data, dict) else None
    for body in (tenants or {}).values() if isinstance(tenants, dict) else ():
        if isinstance(body, dict) and isinstance(body.get("cedar"), list):
            names.extend(n for n in body["cedar"] if isinstance(n, str) and "/" not in n and n.endswith(".cedar"))
    return names


def load_pack(path: Path) -> Pack:
    """Read and check the pack at `path` (file or directory)."""
    return parse_pack(read_pack_files(path), origin=str(path.parent if path.is_file() else path))


# --- parsing ---------------------------------------------------------------------------------


def parse_pack(files: Mapping[str, str], *, origin: str = "") -> Pack:
    """Check a pack given as file name -> text. Names in errors are `<origin>/<name>`."""
    def shown(name: str) -> str:
        return f"{origin}/{name}" if origin else name

    yaml_files = {n: t for n, t in files.items() if n.endswith((".yaml", ".yml"))}
    cedar_files = {n: t for n, t in files.items() if n.endswith(".cedar")}
    if not yaml_files and not cedar_files:
        raise PackError(f"{origin or 'pack'}: no .yaml or .cedar files in the pack")
    if not yaml_files:
        digest = hashlib.sha256("".join(f"{n}\0{t}\0" for n, t in sorted(cedar_files.items())).encode()).hexdigest()
        raw = tuple(RawCedar(text, Source(shown(name), 1)) for name, text in sorted(cedar_files.items()))
        return Pack(version=f"cedar-{digest[:12]}", tenants={ALL_TENANTS: TenantPolicy(ALL_TENANTS, cedar=raw)},
                    files=dict(files))
    versions: dict[str, str] = {}
    tenants: dict[str, TenantPolicy] = {}
    tests: list[TestCase] = []
    referenced: set[str] = set()
    problems: list[PackError] = []
    for name, text in sorted(yaml_files.items()):
        source = shown(name)
        data = _yaml(text, source)
        part = _Part(source, cedar_files, shown)
        version, part_tenants, part_tests = part.top(data)
        if version is not None:
            versions[source] = version
        for tenant, policy in part_tenants.items():
            if tenant in tenants:
                raise PackError(f"{source}:{data.key_lines.get('tenants', 0)}: tenant {tenant!r} is also defined in "
                                "another file of the pack: keep each tenant in one file")
            tenants[tenant] = policy
        tests.extend(part_tests)
        referenced |= part.referenced
        problems += part.problems
    if problems:
        # Before the checks across files, which a tenant left out for its problems would only confuse.
        raise PackError(str(problems[0]) if len(problems) == 1 else f"{len(problems)} problems:\n"
                        + "\n".join(f"  {problem}" for problem in problems))
    if len(set(versions.values())) > 1:
        listed = ", ".join(f"{file} says {v!r}" for file, v in versions.items())
        raise PackError(f"the pack's files disagree on `version` ({listed}): give them one version")
    if not versions:
        raise PackError(f"{shown(sorted(yaml_files)[0])}:1: set `version` to a quoted string, e.g. version: "
                        '"2026-11-26.1" (every decision names the version that made it)')
    unused = sorted(set(cedar_files) - referenced)
    if unused:
        raise PackError(f"{shown(unused[0])}: no tenant uses this Cedar file: add `cedar: [{unused[0]}]` under "
                        "the tenant it belongs to")
    return Pack(version=next(iter(versions.values())), tenants=tenants, tests=tuple(tests), files=dict(files))


class _Part:
    """Parses one YAML file of a pack; `fail` builds errors that name this file and a line."""

    def __init__(self, source: str, cedar_files: Mapping[str, str], shown: Callable[[str], str]) -> None:
        self.source = source
        self.cedar_files = cedar_files
        self.shown = shown
        self.referenced: set[str] = set()
        self.problems: list[PackError] = []

    def collecting(self, parse: Callable[..., T], *args: Any) -> T | None:
        """`parse(*args)`, or None with its problem kept, so one run reports every bad rule, tenant and case."""
        try:
            return parse(*args)
        except PackError as problem:
            self.problems.append(problem)
            return None

    def fail(self, line: int, where: str, problem: str) -> PackError:
        at = f"{self.source}:{line}" if line else self.source
        return PackError(f"{at}: {where}{': ' if where else ''}{problem}")

    def top(self, data: Any) -> tuple[str | None, dict[str, TenantPolicy], list[TestCase]]:
        if not isinstance(data, _Mapping):
            raise self.fail(1, "", "expected a mapping with `version` and `tenants` (start from the default pack: "
                                   "`caduceus policy check` names it)")
        self.unknown(data, TOP_KEYS, "", "the top level")
        version = data.get("version")
        if "version" in data and (not isinstance(version, str) or not version.strip()):
            raise self.fail(data.key_lines["version"], "", 'set `version` to a quoted string, e.g. version: '
                                                           '"2026-11-26.1"')
        tenants_data = data.get("tenants", {})
        if not isinstance(tenants_data, _Mapping):
            raise self.fail(data.key_lines.get("tenants", 1), "", "set `tenants` to a mapping of tenant name to "
                                                                  "its policy ({rules: [...]})")
        tenants = {name: policy for name, body in tenants_data.items()
                   if (policy := self.collecting(self.tenant, name, body, tenants_data.key_lines[name])) is not None}
        tests_data = data.get("tests", [])
        if not isinstance(tests_data, list):
            raise self.fail(data.key_lines.get("tests", 1), "", "`tests` is a list of cases (tenant, user, roles, "
                                                                "tool, args, expect)")
        tests = [case for index, raw in enumerate(tests_data, 1)
                 if (case := self.collecting(self.test_case, raw, index, data.key_lines["tests"])) is not None]
        return (version.strip() if isinstance(version, str) else None), tenants, tests

    def unknown(self, data: _Mapping, allowed: tuple[str, ...], where: str, what: str) -> None:
        for key in data:
            if key not in allowed:
                raise self.fail(data.key_lines.get(key, data.line), where,
                                f"unknown key `{key}` in {what}: use one of {', '.join(allowed)}")

    # --- tenants ----------------------------------------------------------------------------

    def tenant(self, name: Any, body: Any, line: int) -> TenantPolicy:
        where = f"tenant {name!r}"
        if not isinstance(name, str) or not subjects.TOKEN_RE.match(name):
            raise self.fail(line, where, "tenant names use 1-63 lowercase letters, digits, '-' or '_'")
        if not isinstance(body, _Mapping):
            raise self.fail(line, where, "give the tenant a mapping with `rules: [...]` (and optionally approvals, "
                                         "approval_modes, classifiers, mcp_servers, limits, cedar, models, "
                                         "guardrails)")
        self.unknown(body, TENANT_KEYS, where, "a tenant")
        approval = None
        if "approvals" in body:
            approval = self.approval(body["approvals"], body.key_lines["approvals"], where, required=True)
        rules_data = body.get("rules", [])
        if not isinstance(rules_data, list):
            raise self.fail(body.key_lines.get("rules", line), where, "`rules` is a list of rules")
        rules: list[Rule] = []
        for index, raw in enumerate(rules_data, 1):
            rule = self.collecting(self.rule, raw, index, where, approval, body.key_lines["rules"])
            if rule is not None and any(existing.id == rule.id for existing in rules):
                self.problems.append(self.fail(rule.source.line, f"{where}, rule {rule.id!r}",
                                               "rule ids must be unique within a tenant: rename it"))
            elif rule is not None:
                rules.append(rule)
        modes = self.approval_modes(body.get("approval_modes", {}), body.key_lines.get("approval_modes", line),
                                    where, approval)
        limits = self.limits(body.get("limits", []), body.key_lines.get("limits", line), where)
        ids = [r.id for r in rules] + [limit.id for limit in limits]
        duplicate = next((i for i in ids if ids.count(i) > 1), None)
        if duplicate:
            raise self.fail(line, where, f"id {duplicate!r} names both a rule and a limit: rename one")
        return TenantPolicy(
            name=name, rules=tuple(rules), approval=approval, approval_modes=modes,
            classifiers=self.classifiers(body.get("classifiers", {}), body.key_lines.get("classifiers", line), where),
            mcp=self.mcp(body.get("mcp_servers", {}), body.key_lines.get("mcp_servers", line), where),
            limits=tuple(limits),
            cedar=self.cedar(body.get("cedar", []), body.key_lines.get("cedar", line), where),
            **({"models": self.models(body["models"], body.key_lines["models"], where)} if "models" in body else {}),
            guardrails=self.guardrails(body.get("guardrails", []), body.key_lines.get("guardrails", line), where),
        )

    def guardrails(self, raw: Any, line: int, where: str) -> tuple[Guardrail, ...]:
        example = ("[{id: acme-turns, tool_calls: 12, model_calls: 20, tokens: 50000, wall_time: 5m, same_call: 3, "
                   "same_failing_call: 2}, {id: admins-do-more, roles: [admin], tool_calls: 40}]")
        if not isinstance(raw, list):
            raise self.fail(line, where, f"`guardrails` is a list of per-turn limits, e.g. {example}")
        found: list[Guardrail] = []
        for index, item in enumerate(raw, 1):
            if not isinstance(item, _Mapping):
                raise self.fail(line, f"{where}, guardrail #{index}", f"each guardrail is a mapping, e.g. {example}")
            what = f"{where}, guardrail {item.get('id', f'#{index}')!r}"
            self.unknown(item, GUARDRAIL_KEYS, what, "a guardrail")
            guardrail_id = item.get("id")
            if not isinstance(guardrail_id, str) or not _ID.match(guardrail_id):
                raise self.fail(item.line, what, "give the guardrail an `id` (letters, digits, '-', '_')")
            if any(existing.id == guardrail_id for existing in found):
                raise self.fail(item.line, what, "guardrail ids must be unique within a tenant: rename it")
            roles, workspaces = self.names(item, "roles", what), self.names(item, "workspaces", what)
            counts: dict[str, int] = {}
            for key in GUARDRAIL_COUNTS:
                if key in item:
                    value = item[key]
                    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                        raise self.fail(item.key_lines[key], what, f"`{key}` must be a whole number of at least 1")
                    counts[key] = value
            wall_time = None
            if "wall_time" in item:
                wall_time = parse_duration(item["wall_time"])
                if wall_time is None or wall_time > 86400:
                    raise self.fail(item.key_lines["wall_time"], what, "`wall_time` is how long a turn may run, "
                                                                       "e.g. 90s, 5m (at most 24h)")
            if not counts and wall_time is None:
                raise self.fail(item.line, what, "set at least one of model_calls, tool_calls, tokens, wall_time, "
                                                 "same_call, same_failing_call")
            found.append(Guardrail(id=guardrail_id, source=Source(self.source, item.line), roles=roles,
                                   workspaces=workspaces, wall_time_s=wall_time, **counts))
        return tuple(found)

    def models(self, raw: Any, line: int, where: str) -> ModelPolicy:
        example = ("{default: outside, routes: [{id: classified-stays-home, upstream: self-hosted, data_classes: "
                   "[classified]}], prompt_rules: {secret: redact, classified: deny}}")
        if not isinstance(raw, _Mapping):
            raise self.fail(line, where, f"`models` is a mapping, e.g. {example}")
        what = f"{where}, models"
        self.unknown(raw, MODELS_KEYS, what, "`models`")
        default = raw.get("default")
        if default is not None and (not isinstance(default, str) or not _ID.match(default)):
            raise self.fail(raw.key_lines.get("default", raw.line), what, "`default` names an upstream of the "
                                                                          "inference gateway, e.g. default")
        routes_raw = raw.get("routes", [])
        if not isinstance(routes_raw, list):
            raise self.fail(raw.key_lines.get("routes", raw.line), what, f"`routes` is a list, e.g. {example}")
        routes: list[ModelRoute] = []
        for index, item in enumerate(routes_raw, 1):
            if not isinstance(item, _Mapping):
                raise self.fail(raw.line, f"{what}, route #{index}", "each route is a mapping")
            at = f"{what}, route {item.get('id', f'#{index}')!r}"
            self.unknown(item, ROUTE_KEYS, at, "a model route")
            route_id, upstream = item.get("id"), item.get("upstream")
            if not isinstance(route_id, str) or not _ID.match(route_id):
                raise self.fail(item.line, at, "give the route an `id` (letters, digits, '-', '_')")
            if not isinstance(upstream, str) or not _ID.match(upstream):
                raise self.fail(item.line, at, "give the route an `upstream`: a name the inference gateway knows")
            routes.append(ModelRoute(id=route_id, upstream=upstream, source=Source(self.source, item.line),
                                     roles=self.names(item, "roles", at), workspaces=self.names(item, "workspaces", at),
                                     data_classes=self.names(item, "data_classes", at)))
        rules = {key: self.data_rules(raw.get(key, {}), raw.key_lines.get(key, raw.line), what, key)
                 for key in ("prompt_rules", "response_rules")}
        return ModelPolicy(default=default, routes=tuple(routes), source=Source(self.source, line), **rules)

    def data_rules(self, raw: Any, line: int, where: str, key: str) -> dict[str, Any]:
        if not isinstance(raw, Mapping) or not all(isinstance(k, str) and v in ("deny", "redact")
                                                   for k, v in raw.items()):
            raise self.fail(line, where, f"`{key}` maps a data class (secret, or a classifier's name) to deny or "
                                         "redact, e.g. {secret: redact, classified: deny}")
        return {str(k): v for k, v in raw.items()}

    def approval(self, raw: Any, line: int, where: str, *, required: bool,
                 defaults: Approval | None = None) -> Approval:
        if not isinstance(raw, _Mapping):
            raise self.fail(line, where, "`approvals` is a mapping: {approvers: <group>, quorum: 1, timeout: 15m}")
        self.unknown(raw, APPROVAL_KEYS, where, "`approvals`")
        return self.approval_fields(raw, where, defaults, line)

    def approval_fields(self, raw: Mapping[str, Any], where: str, defaults: Approval | None, line: int) -> Approval:
        lines = getattr(raw, "key_lines", {})
        approvers = raw.get("approvers", defaults.approvers if defaults else None)
        if not isinstance(approvers, str) or not approvers.strip():
            raise self.fail(lines.get("approvers", line), where, "name the approver group: `approvers: admins` (or "
                                                                  "set tenant-wide `approvals: {approvers: ...}`)")
        quorum = raw.get("quorum", defaults.quorum if defaults else 1)
        if not isinstance(quorum, int) or isinstance(quorum, bool) or not 1 <= quorum <= 20:
            raise self.fail(lines.get("quorum", line), where, f"`quorum` is how many approvers must agree: a whole "
                                                              f"number from 1 to 20, not {quorum!r}")
        timeout_raw = raw.get("timeout", defaults.timeout_s if defaults else 900)
        timeout = parse_duration(timeout_raw)
        if timeout is None or timeout > 7 * 86400:
            raise self.fail(lines.get("timeout", line), where, f"`timeout` is how long approvers have, e.g. 15m or "
                                                               f"2h (at most 7d), not {timeout_raw!r}")
        escalate_to = raw.get("escalate_to", defaults.escalate_to if defaults else ())
        escalate_to = (escalate_to,) if isinstance(escalate_to, str) else escalate_to
        if not isinstance(escalate_to, (list, tuple)) or not all(isinstance(g, str) and g.strip() for g in escalate_to):
            raise self.fail(lines.get("escalate_to", line), where, "`escalate_to` names the group (or groups) that may "
                                                                   "answer once the first ones were slow: [owner]")
        escalate_after = self.optional_duration(raw, "escalate_after", defaults.escalate_after_s if defaults else None,
                                                where, lines.get("escalate_after", line))
        if bool(escalate_to) != (escalate_after is not None):
            raise self.fail(lines.get("escalate_to", lines.get("escalate_after", line)), where,
                            "give `escalate_to` and `escalate_after` together, e.g. {escalate_to: [owner], "
                            "escalate_after: 10m}")
        remind_every = self.optional_duration(raw, "remind_every", defaults.remind_every_s if defaults else None,
                                              where, lines.get("remind_every", line))
        self_approval = raw.get("self_approval", defaults.self_approval if defaults else False)
        if not isinstance(self_approval, bool):
            raise self.fail(lines.get("self_approval", line), where, "`self_approval` is true or false (whether "
                                                                     "requesters may approve their own calls)")
        return Approval(approvers=approvers.strip(), quorum=quorum, timeout_s=timeout,
                        escalate_to=tuple(g.strip() for g in escalate_to), escalate_after_s=escalate_after,
                        remind_every_s=remind_every, self_approval=self_approval)

    def optional_duration(self, raw: Mapping[str, Any], key: str, default: float | None, where: str,
                          line: int) -> float | None:
        if key not in raw:
            return default
        value = parse_duration(raw[key])
        if value is None or value > 7 * 86400:
            raise self.fail(line, where, f"`{key}` is a duration such as 10m or 1h (at most 7d), not {raw[key]!r}")
        return value

    def rule(self, raw: Any, index: int, tenant_where: str, tenant_approval: Approval | None, list_line: int) -> Rule:
        name = f"rule {raw['id']!r} (#{index})" if isinstance(raw, _Mapping) and isinstance(raw.get("id"), str) \
            else f"rule #{index}"
        where = f"{tenant_where}, {name}"
        if not isinstance(raw, _Mapping):
            raise self.fail(list_line, where, f"each rule is a mapping with keys {', '.join(RULE_KEYS)}")
        line = raw.line
        self.unknown(raw, RULE_KEYS, where, "a rule")
        rule_id = raw.get("id")
        if not isinstance(rule_id, str) or not _ID.match(rule_id.strip()):
            raise self.fail(line, where, "give the rule an `id`: letters, digits, '-', '_', '.', ':' (decisions "
                                         "cite it)")
        effect = raw.get("effect")
        if effect not in ("allow", "deny", "approve"):
            raise self.fail(raw.key_lines.get("effect", line), where, f"`effect` is {effect!r}: use `allow`, `deny` "
                                                                      "or `approve`")
        tools = self.tools(raw.get("tools"), raw.key_lines.get("tools", line), where)
        roles = self.names(raw, "roles", where)
        users = self.names(raw, "users", where)
        when = self.conditions(raw.get("when") or {}, raw.key_lines.get("when", line), where, "when")
        unless = self.conditions(raw.get("unless") or {}, raw.key_lines.get("unless", line), where, "unless")
        reason = raw.get("reason", "")
        if not isinstance(reason, str):
            raise self.fail(raw.key_lines.get("reason", line), where, "`reason` must be text (it is shown to the "
                                                                       "person whose call was decided)")
        approval = None
        approval_keys = set(APPROVAL_KEYS) & set(raw)
        if effect == "approve":
            approval = self.approval_fields(raw, where, tenant_approval, line)
        elif approval_keys:
            key = sorted(approval_keys)[0]
            raise self.fail(raw.key_lines[key], where, f"`{key}` only belongs to a rule with `effect: approve`")
        return Rule(id=rule_id.strip(), effect=effect, tools=tools, source=Source(self.source, line), roles=roles,
                    users=users, when=when, unless=unless, reason=" ".join(reason.split()), approval=approval)

    def tools(self, value: Any, line: int, where: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise self.fail(line, where, "`tools` must be a non-empty list of tool names or globs, e.g. "
                                         "[read_file, 'mcp__github__*'] (or ['*'] for every tool)")
        for tool in value:
            if not _TOOL_GLOB.match(tool):
                raise self.fail(line, where, f"tool pattern {tool!r}: use letters, digits, '_', '-', '.' and `*` "
                                             "(any run of characters); `?` and `[...]` are not supported")
        return tuple(value)

    def names(self, raw: _Mapping, key: str, where: str) -> tuple[str, ...] | None:
        if key not in raw:
            return None
        value = raw[key]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
            raise self.fail(raw.key_lines[key], where, f"`{key}` must be a non-empty list of names (leave it out to "
                                                       f"match anyone)")
        return tuple(v.strip() for v in value)

    def conditions(self, raw: Any, line: int, where: str, key: str) -> dict[str, Any]:
        if not isinstance(raw, Mapping):
            raise self.fail(line, where, f"`{key}` must be a mapping of facts, e.g. {{path_outside_workspace: true}}")
        lines = getattr(raw, "key_lines", {})
        for fact, expected in raw.items():
            at = lines.get(fact, line)
            if fact not in KNOWN_FACTS:
                close = [f for f in KNOWN_FACTS if f.split("_")[0] == str(fact).split("_")[0]]
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise self.fail(at, where, f"unknown fact {fact!r} in `{key}`{hint}; known facts: "
                                           f"{', '.join(sorted(KNOWN_FACTS))}")
            self.condition(fact, KNOWN_FACTS[fact], expected, at, where, key)
        return dict(raw)

    def condition(self, fact: str, kind: str, expected: Any, line: int, where: str, key: str) -> None:
        def bad(example: str) -> PackError:
            return self.fail(line, where, f"`{key}: {fact}` is a {kind} fact: write {example}, not {expected!r}")

        if kind == "Bool":
            if not isinstance(expected, bool):
                raise bad(f"{fact}: true")
            return
        if isinstance(expected, Mapping):
            if len(expected) != 1 or next(iter(expected)) not in OPERATORS:
                raise self.fail(line, where, f"`{key}: {fact}` takes one operator of {', '.join(OPERATORS)}, e.g. "
                                             f"{{{fact}: {{any_of: [a, b]}}}}")
            operator, operand = next(iter(expected.items()))
            if operator == "empty":
                if not isinstance(operand, bool) or kind != "Set<String>":
                    raise bad(f"{fact}: {{empty: true}} (sets only)")
            elif operator == "like":
                if not isinstance(operand, str) or kind != "String":
                    raise bad(f'{fact}: {{like: "prefix*"}} (text facts only)')
            elif not isinstance(operand, list) or not all(isinstance(v, str) for v in operand):
                raise bad(f"{fact}: {{{operator}: [a, b]}}")
            elif kind == "String" and operator not in ("any_of", "none_of"):
                raise bad(f"{fact}: {{any_of: [a, b]}} (a text fact is one value)")
            return
        if isinstance(expected, str):
            return
        if isinstance(expected, list) and expected and all(isinstance(v, str) for v in expected):
            return
        raise bad(f"{fact}: value, or {fact}: [a, b] (any of them)")

    def approval_modes(self, raw: Any, line: int, where: str, approval: Approval | None) -> dict[str, Any]:
        if not isinstance(raw, Mapping):
            raise self.fail(line, where, "`approval_modes` maps a user to always-ask, ask-when-risky or never")
        lines = getattr(raw, "key_lines", {})
        for user, mode in raw.items():
            if mode not in ("always-ask", "ask-when-risky", "never"):
                raise self.fail(lines.get(user, line), where, f"approval mode of {user!r} is {mode!r}: use "
                                                              "always-ask, ask-when-risky or never")
            if mode != "never" and approval is None:
                raise self.fail(lines.get(user, line), where, "approval modes need the tenant's approvers: add "
                                                              "`approvals: {approvers: <group>}` to the tenant")
        return {str(user): mode for user, mode in raw.items()}

    def classifiers(self, raw: Any, line: int, where: str) -> tuple[Classifier, ...]:
        if not isinstance(raw, Mapping):
            raise self.fail(line, where, "`classifiers` maps a data class name to {patterns: [...], words: [...]}")
        lines = getattr(raw, "key_lines", {})
        found = []
        for name, body in raw.items():
            at = lines.get(name, line)
            what = f"{where}, classifier {name!r}"
            if not isinstance(name, str) or not _ID.match(name):
                raise self.fail(at, what, "classifier names use letters, digits, '-', '_'")
            if not isinstance(body, Mapping) or not set(body) <= {"patterns", "words"} or not body:
                raise self.fail(at, what, "give `patterns: [regex, ...]` and/or `words: [word, ...]`")
            patterns = []
            for pattern in body.get("patterns", []) or []:
                if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN_LENGTH:
                    raise self.fail(at, what, f"each pattern is a regex of at most {MAX_PATTERN_LENGTH} characters")
                if _NESTED_QUANTIFIER.search(pattern):
                    raise self.fail(at, what, f"pattern {pattern!r} repeats a group that itself repeats, which can "
                                              "take exponential time on hostile input: rewrite it without nesting")
                try:
                    patterns.append(re.compile(pattern))
                except re.error as exc:
                    raise self.fail(at, what, f"pattern {pattern!r} is not a valid regex: {exc}") from None
            words = body.get("words", []) or []
            if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
                raise self.fail(at, what, "`words` is a list of words or phrases")
            found.append(Classifier(name=name, patterns=tuple(patterns), words=tuple(w.strip() for w in words)))
        return tuple(found)

    def mcp(self, raw: Any, line: int, where: str) -> dict[str, dict[str, McpAnnotations]]:
        example = "{github: {tools: {get_issue: {read_only: true}, delete_repo: {destructive: true}}}}"
        if not isinstance(raw, Mapping):
            raise self.fail(line, where, f"`mcp_servers` maps a server to its tools' annotations, e.g. {example}")
        lines = getattr(raw, "key_lines", {})
        servers: dict[str, dict[str, McpAnnotations]] = {}
        for server, body in raw.items():
            at = lines.get(server, line)
            if not isinstance(body, Mapping) or set(body) != {"tools"} or not isinstance(body["tools"], Mapping):
                raise self.fail(at, f"{where}, MCP server {server!r}", f"write {example}")
            tools: dict[str, McpAnnotations] = {}
            for tool, notes in body["tools"].items():
                if not isinstance(notes, Mapping) or not set(notes) <= {"read_only", "destructive"} or \
                        not all(isinstance(v, bool) for v in notes.values()):
                    raise self.fail(at, f"{where}, MCP tool {server}/{tool}", "annotations are read_only and "
                                                                              "destructive, each true or false")
                read_only = notes.get("read_only", False)
                tools[str(tool)] = McpAnnotations(read_only=read_only,
                                                  destructive=notes.get("destructive", not read_only))
            servers[str(server)] = tools
        return servers

    def limits(self, raw: Any, line: int, where: str) -> list[Limit]:
        if not isinstance(raw, list):
            raise self.fail(line, where, "`limits` is a list, e.g. [{id: terminal-rate, tools: [terminal], per: "
                                         "user, max_calls: 60, window: 1m}]")
        found = []
        for index, item in enumerate(raw, 1):
            if not isinstance(item, _Mapping):
                raise self.fail(line, f"{where}, limit #{index}", "each limit is a mapping")
            what = f"{where}, limit {item.get('id', f'#{index}')!r}"
            self.unknown(item, LIMIT_KEYS, what, "a limit")
            limit_id = item.get("id")
            if not isinstance(limit_id, str) or not _ID.match(limit_id):
                raise self.fail(item.line, what, "give the limit an `id` (letters, digits, '-', '_')")
            kinds = [k for k in ("max_calls", "max_tokens", "max_cost_usd") if k in item]
            if len(kinds) != 1:
                raise self.fail(item.line, what, "give exactly one of max_calls, max_tokens, max_cost_usd")
            maximum = item[kinds[0]]
            if isinstance(maximum, bool) or not isinstance(maximum, int | float) or maximum <= 0:
                raise self.fail(item.key_lines[kinds[0]], what, f"`{kinds[0]}` must be a positive number")
            window = parse_duration(item.get("window"))
            if window is None or window > 31 * 86400:
                raise self.fail(item.key_lines.get("window", item.line), what, "`window` is the sliding window, "
                                                                               "e.g. 1m, 1h, 24h (at most 31d)")
            per_raw = item.get("per", "user")
            per = [per_raw] if isinstance(per_raw, str) else per_raw
            if not isinstance(per, list) or not per or not all(p in ("user", "tenant", "tool", "workspace")
                                                                for p in per):
                raise self.fail(item.key_lines.get("per", item.line), what, "`per` is user, tenant, tool or "
                                                                            "workspace, or a list of them")
            kind = {"max_calls": "calls", "max_tokens": "tokens", "max_cost_usd": "cost_usd"}[kinds[0]]
            tools = self.tools(item["tools"], item.key_lines["tools"], what) if "tools" in item else None
            if kind != "calls" and ("tools" in item or "tool" in per):
                raise self.fail(item.line, what, "token and cost budgets count model usage, not tool calls: drop "
                                                 "`tools` (and `tool` from `per`)")
            found.append(Limit(id=limit_id, kind=kind, maximum=float(maximum), window_s=window,
                               per=tuple(dict.fromkeys(per)), source=Source(self.source, item.line), tools=tools,
                               roles=self.names(item, "roles", what)))
        return found

    def cedar(self, raw: Any, line: int, where: str) -> tuple[RawCedar, ...]:
        if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
            raise self.fail(line, where, "`cedar` lists Cedar files beside this one, e.g. [acme-extra.cedar]")
        found = []
        for name in raw:
            if name not in self.cedar_files:
                raise self.fail(line, where, f"Cedar file {name!r} is not in the pack: put it beside this file")
            self.referenced.add(name)
            found.append(RawCedar(self.cedar_files[name], Source(self.shown(name), 1)))
        return tuple(found)

    # --- tests --------------------------------------------------------------------------------

    def test_case(self, raw: Any, index: int, list_line: int) -> TestCase:
        where = f"test #{index}"
        if not isinstance(raw, _Mapping):
            raise self.fail(list_line, where, "each test is a mapping: {name, tenant, user, roles, tool, args, "
                                              "expect}")
        where = f"test {raw.get('name', f'#{index}')!r}"
        self.unknown(raw, TEST_KEYS, where, "a test")
        prompt = raw.get("prompt")
        if prompt is not None and (not isinstance(prompt, str) or "tool" in raw):
            raise self.fail(raw.line, where, "a model-call test gives `prompt` (text) and no `tool`")
        for key in ("tenant", "expect") if prompt is not None else ("tenant", "tool", "expect"):
            if not isinstance(raw.get(key), str):
                raise self.fail(raw.line, where, f"give `{key}`")
        upstream = raw.get("expect_upstream")
        if upstream is not None and (prompt is None or not isinstance(upstream, str)):
            raise self.fail(raw.line, where, "`expect_upstream` names an upstream, in a test with a `prompt`")
        if raw["expect"] not in ("allow", "deny", "approve"):
            raise self.fail(raw.key_lines["expect"], where, "`expect` is allow, deny or approve")
        args = raw.get("args", {})
        if not isinstance(args, Mapping):
            raise self.fail(raw.key_lines.get("args", raw.line), where, "`args` is a mapping of the tool's arguments")
        roles = raw.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise self.fail(raw.key_lines.get("roles", raw.line), where, "`roles` is a list of role names")
        ids = raw.get("expect_ids")
        if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)):
            raise self.fail(raw.key_lines["expect_ids"], where, "`expect_ids` is a list of rule ids")
        return TestCase(name=str(raw.get("name", f"test #{index}")), tenant=raw["tenant"],
                        tool=raw["tool"] if prompt is None else "model", prompt=prompt, expect_upstream=upstream,
                        args=_plain(args), expect=raw["expect"], source=Source(self.source, raw.line),
                        user=str(raw.get("user", "test-user")), roles=tuple(roles),
                        workspace=str(raw.get("workspace", "default")),
                        expect_ids=tuple(ids) if ids is not None else None,
                        turn=self.turn_state(raw["turn"], raw.key_lines["turn"], where) if "turn" in raw else None)

    def turn_state(self, raw: Any, line: int, where: str) -> dict[str, float]:
        example = "{tool_calls: 50, ran: 10m, same_call: 2}"
        if not isinstance(raw, _Mapping):
            raise self.fail(line, where, f"`turn` says what the call's turn did before it, e.g. {example}")
        self.unknown(raw, TURN_KEYS, f"{where}, turn", "`turn`")
        state: dict[str, float] = {}
        for key, value in raw.items():
            if key == "ran":
                seconds = parse_duration(value)
                if seconds is None:
                    raise self.fail(raw.key_lines[key], where, "`ran` is how long the turn has run, e.g. 90s, 10m")
                state["ran_s"] = seconds
            elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise self.fail(raw.key_lines[key], where, f"`{key}` is a count (0 or more), e.g. {example}")
            else:
                state[key] = float(value)
        return state


def _plain(value: Any) -> Any:
    """YAML mappings back to plain dicts (test arguments are compared and digested like real ones)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def parse_test_file(text: str, source: str) -> tuple[str | None, list[TestCase]]:
    """A separate tests file: `pack:` (path relative to it, optional) and `cases:`."""
    data = _yaml(text, source)
    part = _Part(source, {}, lambda name: name)
    if not isinstance(data, _Mapping) or "cases" not in data:
        raise part.fail(1, "", "a tests file is a mapping with `cases: [...]` (and `pack: <path>` unless you pass "
                               "the pack)")
    part.unknown(data, ("pack", "cases"), "", "a tests file")
    pack = data.get("pack")
    if pack is not None and not isinstance(pack, str):
        raise part.fail(data.key_lines["pack"], "", "`pack` is the path of the pack, relative to this file")
    cases = data["cases"]
    if not isinstance(cases, list):
        raise part.fail(data.key_lines["cases"], "", "`cases` is a list")
    return pack, [part.test_case(raw, index, data.key_lines["cases"]) for index, raw in enumerate(cases, 1)]
