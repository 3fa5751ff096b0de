"""The configuration reference (docs/configuration.md), generated from the settings models themselves.

Every process reads its configuration from one pydantic-settings model; this walks those models and the
CLI's environment-backed options and renders each variable with its type, default and meaning. The meaning
is the field's `Field(description=...)`; a field without one is a documentation bug (`undocumented()` names
it, and a test fails on it).
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from pydantic import SecretStr, ValidationError
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from caduceus_approval import ApprovalSettings
from caduceus_audit import AuditSettings
from caduceus_broker import BrokerSettings, WorkerSettings
from caduceus_broker import ModelSettings as BrokerModelSettings
from caduceus_bus import BusSettings, default_state_dir
from caduceus_embedded.settings import ModelSettings as EmbeddedModelSettings
from caduceus_gateway import GatewaySettings
from caduceus_hermes_plugin.plugin import PluginSettings
from caduceus_identity import IdentitySettings
from caduceus_inference import InferenceSettings
from caduceus_mcp import McpSettings
from caduceus_policy import PolicySettings
from caduceus_telemetry import TelemetrySettings

# What a path derived from the state dir looks like in the reference.
STATE_DIR_PLACEHOLDER = Path("<state_dir>")


@dataclass(frozen=True)
class Section:
    """One process's (or library's) settings model, and the fields it inherits from a model documented elsewhere."""

    title: str
    model: type[BaseSettings]
    intro: str
    inherits: type[BaseSettings] | None = None


SECTIONS: list[Section] = [
    Section("Bus connection (every service and worker)", BusSettings,
            "Read by every service, every worker and the CLI (`caduceus_bus.BusSettings`); each service's own "
            "settings below add to these."),
    Section("identity", IdentitySettings, "`python -m caduceus_identity` (`caduceus_identity.settings`).",
            BusSettings),
    Section("policy", PolicySettings, "`python -m caduceus_policy` (`caduceus_policy.settings`).", BusSettings),
    Section("approval", ApprovalSettings, "`python -m caduceus_approval` (`caduceus_approval.settings`).",
            BusSettings),
    Section("broker", BrokerSettings, "`python -m caduceus_broker` (`caduceus_broker.settings.BrokerSettings`); "
            "it also reads the bus connection above."),
    Section("broker: the planners' model endpoint", BrokerModelSettings,
            "Read by the broker and handed to each planner (`caduceus_broker.settings.ModelSettings`)."),
    Section("audit", AuditSettings, "`python -m caduceus_audit` (`caduceus_audit.settings`).", BusSettings),
    Section("inference", InferenceSettings, "`python -m caduceus_inference` (`caduceus_inference.settings`); "
            "each upstream in `CADUCEUS_INFERENCE_UPSTREAMS` takes base_url, api_key, model, usd_per_1k_prompt, "
            "usd_per_1k_completion.", BusSettings),
    Section("workers (set by the broker)", WorkerSettings,
            "The broker sets these for each planner and executor it starts "
            "(`caduceus_broker.settings.WorkerSettings`); operators do not set them."),
    Section("Hermes plugin (set by the broker)", PluginSettings,
            "Read by the Caduceus Hermes plugin inside a worker (`caduceus_hermes_plugin.plugin`)."),
    Section("embedded stack (`caduceus up`)", EmbeddedModelSettings,
            "Which model `caduceus up` and `caduceus demo` give the planners (`caduceus_embedded.settings`); "
            "unset base URL: the scripted model of the offline demo."),
    Section("OpenTelemetry (every process)", TelemetrySettings,
            "Standard OpenTelemetry names, without the CADUCEUS_ prefix (`caduceus_telemetry`); the OTLP exporter "
            "also reads the other `OTEL_EXPORTER_OTLP_*` variables itself."),
    Section("gateway", GatewaySettings, "`python -m caduceus_gateway` (`caduceus_gateway.settings`): the web chat "
            "and the chat integrations.", BusSettings),
    Section("mcp", McpSettings, "`python -m caduceus_mcp` (`caduceus_mcp.settings`): the MCP gateway.", BusSettings),
]

@dataclass(frozen=True)
class Variable:
    name: str
    type: str
    default: str
    meaning: str


def env_name(model: type[BaseSettings], field: str) -> str:
    return f"{model.model_config.get('env_prefix', '')}{field}".upper()


def type_name(annotation: Any) -> str:
    """A reader's name for a field's type: `path`, `int`, `list[str]`, `str (optional)`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        inner = " or ".join(type_name(arg) for arg in args)
        return f"{inner} (optional)" if len(args) < len(typing.get_args(annotation)) else inner
    if origin is typing.Literal:
        return " \\| ".join(f"`{value}`" if value else '`""`' for value in typing.get_args(annotation))
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in typing.get_args(annotation))}]"
    if annotation is SecretStr:
        return "str (secret)"
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _isolated_values(model: type[BaseSettings]) -> dict[str, Any]:
    """The model's values with nothing from the environment and the state dir as a placeholder (derived paths)."""

    class Isolated(model):  # type: ignore[valid-type, misc]
        @classmethod
        def settings_customise_sources(cls, settings_cls: Any, init_settings: Any, *_: Any, **__: Any) -> tuple:
            return (init_settings,)

    kwargs = {"state_dir": STATE_DIR_PLACEHOLDER} if "state_dir" in model.model_fields else {}
    try:
        instance = Isolated(**kwargs)
    except ValidationError:
        return {}
    return {name: getattr(instance, name) for name in model.model_fields}


def render_value(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, SecretStr):
        return "unset"
    if isinstance(value, (list, tuple)):
        return f"`{','.join(str(item) for item in value)}`"
    if value == "":
        return '`""`'
    return f"`{value}`"


def default_text(model: type[BaseSettings], field: str, isolated: dict[str, Any]) -> str:
    info = model.model_fields[field]
    if info.default_factory is default_state_dir or field == "state_dir":
        return "the user's data dir (platformdirs; `~/.local/share/caduceus` on Linux)"
    if info.default_factory is not None:
        return render_value(info.default_factory())
    if info.default is PydanticUndefined:
        if field in isolated:
            return render_value(isolated[field])
        return "required"
    return render_value(info.default)


def variables(section: Section) -> list[Variable]:
    model = section.model
    inherited = set(section.inherits.model_fields) if section.inherits else set()
    isolated = _isolated_values(model)
    rows = []
    for field, info in model.model_fields.items():
        if field in inherited:
            continue
        meaning = info.description or ""
        rows.append(Variable(env_name(model, field), type_name(info.annotation), default_text(model, field, isolated),
                             " ".join(meaning.split())))
    return rows


def cli_variables(app: typer.Typer | Any) -> list[Variable]:
    """Options of `caduceus` commands that can come from a CADUCEUS_ variable, with the commands that read them."""
    found: dict[str, tuple[Any, list[str]]] = {}

    def walk(command: Any, path: str) -> None:
        for param in command.params:
            for name in ([param.envvar] if isinstance(param.envvar, str) else param.envvar or []):
                found.setdefault(name, (param, []))[1].append(path)
        # Typer's command classes are its own (it vendors click), so look for subcommands rather than a type.
        for sub_name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, f"{path} {sub_name}")

    # The typer app, or its click command (what a running command finds as its context's root).
    walk(typer.main.get_command(app) if isinstance(app, typer.Typer) else app, "caduceus")
    return [Variable(name, "str", "unset",
                     f"{' '.join((getattr(param, 'help', '') or '').split())} Read by "
                     f"{', '.join(f'`{c}`' for c in commands)}.")
            for name, (param, commands) in sorted(found.items())]


def undocumented() -> list[str]:
    """Settings with no description and no comment above them: each needs `Field(description=...)`."""
    return [f"{section.model.__module__}.{section.model.__name__}: {variable.name}"
            for section in SECTIONS for variable in variables(section) if not variable.meaning]


def _table(rows: list[Variable]) -> list[str]:
    lines = ["| variable | type | default | meaning |", "|---|---|---|---|"]
    for row in rows:
        default, meaning = (text.replace("|", "\\|") for text in (row.default, row.meaning))
        lines.append(f"| `{row.name}` | {row.type} | {default} | {meaning} |")
    return lines


def all_names(app: typer.Typer) -> set[str]:
    """Every variable the reference documents."""
    return {v.name for section in SECTIONS for v in variables(section)} | {v.name for v in cli_variables(app)}


def render(app: typer.Typer | Any) -> str:
    """docs/configuration.md: every variable, by process, as the code defines it today."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `caduceus config reference --write docs/configuration.md`; do not edit by hand. -->",
        "",
        "Every Caduceus process reads its configuration from the environment through one pydantic-settings "
        "model. Names are case-insensitive; lists are JSON (`[\"terminal\",\"file\"]`). A default written as "
        "`<state_dir>/...` is derived from `CADUCEUS_STATE_DIR` when the variable is unset. "
        "`caduceus config reference --check docs/configuration.md` exits 1 when this file is stale.",
        "",
    ]
    for section in SECTIONS:
        lines += [f"## {section.title}", "", section.intro, "", *_table(variables(section)), ""]
    lines += ["## CLI", "", "Options of `caduceus` commands that can also be given in the environment.", "",
              *_table(cli_variables(app)), ""]
    return "\n".join(lines)
