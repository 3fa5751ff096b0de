"""The Caduceus plugin for Hermes Agent (entry point `caduceus` in group `hermes_agent.plugins`).

In a planner it wraps every tool dispatch with `tool_execution` middleware that
sends the call to the bus and returns the outcome; the planner never executes a
workspace tool itself. In an executor it lets Hermes run only the one call the
executor authorized after verifying its decision.

Hermes falls through to local execution when a middleware raises, so neither
middleware ever raises: every failure becomes a denied result.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from caduceus_hermes_plugin import gate
from caduceus_hermes_plugin.gateway import current_gateway
from caduceus_hermes_plugin.outcome import denied
from caduceus_hermes_plugin.tools import runs_in_planner

log = logging.getLogger(__name__)


class PluginSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CADUCEUS_", extra="ignore")

    worker_role: Literal["planner", "executor", ""] = Field(default="", description=(
        "Which middleware the plugin installs: the governed call (planner) or the gate (executor); unset: none."))


def governed_tool_execution(tool_name: str = "", args: Any = None, next_call: Any = None, session_id: str = "",
                            **_: Any) -> str:
    """Planner middleware: decide on the bus, run remotely (or here, for agent-loop tools), never raise."""
    try:
        gateway = current_gateway()
        if gateway is None:
            return denied("the Caduceus gateway is not connected; nothing ran").for_model(tool_name)
        if not isinstance(args, dict):
            return denied("tool arguments must be a JSON object").for_model(tool_name)
        run_locally = next_call if runs_in_planner(tool_name) else None
        return gateway.request_call(tool_name, args, session_id=session_id, run_locally=run_locally).for_model(tool_name)
    except BaseException as exc:
        log.error("governed call of %s failed: %s", tool_name, exc)
        return denied(f"the governed call failed ({type(exc).__name__}); nothing ran").for_model(tool_name)


def executor_gate(tool_name: str = "", args: Any = None, next_call: Any = None, **_: Any) -> Any:
    """Executor middleware: run only the call the executor authorized on this thread."""
    try:
        if isinstance(args, dict) and gate.consume(tool_name, args):
            return next_call(args)
        return json.dumps({"error": f"Caduceus refused {tool_name}: no verified decision authorizes this call",
                           "status": "refused"})
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        return json.dumps({"error": f"{tool_name} failed in the executor: {type(exc).__name__}: {exc}"})


def register(ctx: Any) -> None:
    """Hermes calls this when `caduceus` is listed in `plugins.enabled`."""
    role = PluginSettings().worker_role
    if role == "executor":
        ctx.register_middleware("tool_execution", executor_gate)
    else:
        # A planner, or a Hermes process Caduceus did not start: every call is governed (fails closed
        # when no gateway is connected).
        ctx.register_middleware("tool_execution", governed_tool_execution)
