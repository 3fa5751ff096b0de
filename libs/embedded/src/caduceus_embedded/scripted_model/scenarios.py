"""Scenarios for the scripted model: which reply to play for a conversation, derived from its messages alone.

A scenario file is YAML:

    scenarios:
      - name: demo
        match: "leave a note"              # regex, searched in the turn's user message
        steps:
          - tool_calls: [{name: terminal, arguments: {command: "pwd"}}]
          - content: "done: {last_tool_result}"

Which step plays (stateless, so concurrent conversations never interfere): the *turn* is everything after the
last `user` message; the scenario is the first whose `match` is found (`re.search`) in that user message's text,
and the step is the number of `assistant` messages already in the turn. So a fresh turn plays step 0, the request
carrying step 0's tool results plays step 1, and so on; a second user message in the same chat starts its own
scenario from step 0. A follow-up user message Hermes injects itself (e.g. its "[System: ...]" nudges) matches
no scenario and ends the turn with the unmatched reply. Content may quote the turn's tool results:
`{last_tool_result}` and `{tool_results[N]}`; content and tool-call arguments may quote the groups of the
`match` regex in the user message: `{match[N]}`; content may quote what the agent remembers: `{memory}`, the
entries of the memory block Hermes puts in the system prompt (or "nothing").
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

UNMATCHED_PREVIEW_CHARS = 60
EXHAUSTED_CONTENT = "scripted model: scenario {name!r} has no more steps; the turn is over."
_PLACEHOLDER = re.compile(r"\{(last_tool_result|tool_results\[(\d+)\]|match\[(\d+)\]|memory)\}")
# Hermes's system-prompt block of the agent's notes (tools/memory_tool.py `_render_block`).
_MEMORY_BLOCK = re.compile(r"MEMORY \(your personal notes\)[^\n]*\n═+\n(.*?)(?:\n\n|\n═+|\Z)", re.S)


class ScenarioError(ValueError):
    """A scenario file cannot be used; the message names the file and what to fix."""


class ScriptedToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    arguments: dict[str, Any] = {}


class Step(BaseModel):
    """One assistant message: tool calls, content, or both."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    content: str | None = None
    tool_calls: tuple[ScriptedToolCall, ...] = ()

    @model_validator(mode="after")
    def _says_something(self) -> Step:
        if self.content is None and not self.tool_calls:
            raise ValueError("a step needs `content`, `tool_calls` or both")
        return self


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    match: str
    steps: tuple[Step, ...] = Field(min_length=1)

    @field_validator("match")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"`match` is not a valid regular expression: {exc}") from None
        return value

    def matches(self, text: str) -> bool:
        return re.search(self.match, text) is not None


class ScenarioFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    scenarios: tuple[Scenario, ...]


@dataclass(frozen=True)
class ToolCallOut:
    """A tool call as the OpenAI API carries it (arguments as a JSON string)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Reply:
    """What the model says next, and why (scenario and step, for logs and tests)."""

    content: str | None
    tool_calls: tuple[ToolCallOut, ...] = ()
    scenario: str | None = None
    step: int | None = None

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_calls else "stop"


def default_scenarios_path() -> Path:
    """The demo scenarios shipped with the embedded stack."""
    return Path(__file__).resolve().parent.parent / "defaults" / "scenarios.yaml"


def load_scenarios(path: Path) -> tuple[Scenario, ...]:
    """Read and validate a scenario file; raise ScenarioError saying what is wrong and where."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"scenario file {path} is not valid YAML: {exc}") from None
    try:
        return ScenarioFile.model_validate(data).scenarios
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "top level"
        raise ScenarioError(
            f"scenario file {path} is invalid at {where}: {first.get('msg')} "
            f"(expected `scenarios: [{{name, match, steps: [{{tool_calls: [...]}} | {{content: ...}}]}}]`)"
        ) from None


def message_text(message: dict[str, Any]) -> str:
    """The text of a chat message whose content is a string or a list of content parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _current_turn(messages: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """The last user message's text and the messages after it."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "user":
            return message_text(messages[index]), messages[index + 1:]
    return None, []


@dataclass(frozen=True)
class _Context:
    """What placeholders may quote: the turn's tool results, the match's groups, the remembered notes."""

    tool_results: list[str]
    groups: tuple[str | None, ...]
    memory: str


def _render(template: str, context: _Context) -> str:
    def substitute(found: re.Match[str]) -> str:
        if found.group(1) == "memory":
            return context.memory
        if found.group(3) is not None:
            index = int(found.group(3))
            group = context.groups[index - 1] if 0 < index <= len(context.groups) else None
            return group if group is not None else f"(no match group #{index})"
        results = context.tool_results
        if found.group(2) is None:
            return results[-1] if results else "(no tool result)"
        index = int(found.group(2))
        return results[index] if index < len(results) else f"(no tool result #{index})"

    return _PLACEHOLDER.sub(substitute, template)


def _render_arguments(value: Any, context: _Context) -> Any:
    if isinstance(value, str):
        return _render(value, context)
    if isinstance(value, dict):
        return {key: _render_arguments(item, context) for key, item in value.items()}
    if isinstance(value, list):
        return [_render_arguments(item, context) for item in value]
    return value


def remembered(messages: list[dict[str, Any]]) -> str:
    """The agent's notes Hermes put in the system prompt, entries joined by "; ", or "nothing"."""
    system = "\n".join(message_text(m) for m in messages if m.get("role") == "system")
    found = _MEMORY_BLOCK.search(system)
    if found is None:
        return "nothing"
    entries = [entry.strip() for entry in found.group(1).split("\n§\n") if entry.strip()]
    return "; ".join(entries) or "nothing"


def choose_reply(scenarios: tuple[Scenario, ...], messages: list[dict[str, Any]]) -> Reply:
    """The next assistant message for a conversation (see the module docstring for the rule)."""
    user_text, turn = _current_turn(messages)
    if user_text is None:
        return Reply(content="scripted model: the conversation has no user message to answer.")
    scenario = next((s for s in scenarios if s.matches(user_text)), None)
    if scenario is None:
        preview = user_text[:UNMATCHED_PREVIEW_CHARS]
        return Reply(content=f"scripted model: no scenario matches '{preview}'")
    step_index = sum(1 for m in turn if m.get("role") == "assistant")
    if step_index >= len(scenario.steps):
        return Reply(content=EXHAUSTED_CONTENT.format(name=scenario.name), scenario=scenario.name, step=step_index)
    step = scenario.steps[step_index]
    match = re.search(scenario.match, user_text)
    context = _Context([message_text(m) for m in turn if m.get("role") == "tool"],
                       match.groups() if match else (), remembered(messages))
    calls = tuple(
        ToolCallOut(id=f"call_{uuid.uuid4().hex[:24]}", name=call.name,
                    arguments=json.dumps(_render_arguments(call.arguments, context)))
        for call in step.tool_calls
    )
    content = _render(step.content, context) if step.content is not None else None
    return Reply(content=content, tool_calls=calls, scenario=scenario.name, step=step_index)
