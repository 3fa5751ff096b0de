"""The Caduceus plugin for Hermes Agent: every tool call goes to the bus and is decided before it runs."""

from caduceus_hermes_plugin.gateway import (
    GATEWAY_ROUTES,
    GatewayTimeouts,
    ToolGateway,
    connect_gateway,
    current_gateway,
    install_gateway,
)
from caduceus_hermes_plugin.mcp_tools import fetch_mcp_tools, offer_mcp_tools
from caduceus_hermes_plugin.outcome import CallOutcome
from caduceus_hermes_plugin.tools import AGENT_LOOP_TOOLS, runs_in_planner

__all__ = [
    "AGENT_LOOP_TOOLS", "GATEWAY_ROUTES", "CallOutcome", "GatewayTimeouts", "ToolGateway", "connect_gateway", "current_gateway",
    "install_gateway", "runs_in_planner", "fetch_mcp_tools", "offer_mcp_tools",
]
