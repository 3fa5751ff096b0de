"""The MCP gateway: per-tenant registries of upstream MCP servers, tool lists filtered per person, pinned
definitions, credentials only here, and the one governed path by which a call reaches an upstream.

The public API (the CLI, and the MCP endpoint for other clients, call the same governed path):

    gateway = McpGateway(registry=RegistryFile(path), pins=PinStore(url), secrets=SecretStore(dir), keyring=keys)
    completed = await gateway.call(dispatched)      # verify the signed decision, check the pin, call upstream
    answer = await gateway.tools_for(grant)         # what this person's planner may list
"""

from caduceus_mcp.app import McpService, build, sandbox_policies
from caduceus_mcp.definitions import Definition, definition_diff
from caduceus_mcp.egress import EgressDenied, UpstreamEgress, registration_warnings
from caduceus_mcp.endpoint import ENDPOINT_ROUTES, McpEndpoint
from caduceus_mcp.gateway import DEFINITION_FACT, EXECUTED_BY, CallRefused, Entry, McpGateway, RegistryFile
from caduceus_mcp.handlers import ROUTES
from caduceus_mcp.pins import Pin, PinStore
from caduceus_mcp.registry import (
    Credentials,
    Registry,
    RegistryError,
    Server,
    load_registry,
    parse_registry,
    save_registry,
    split_tool_name,
    tool_name,
)
from caduceus_mcp.settings import McpSettings
from caduceus_mcp.upstream import SecretMissing, SecretStore, Upstream, UpstreamError

__all__ = [
    "DEFINITION_FACT", "ENDPOINT_ROUTES", "EXECUTED_BY", "EgressDenied", "McpEndpoint", "UpstreamEgress",
    "registration_warnings", "sandbox_policies",
    "ROUTES", "CallRefused", "Credentials", "Definition", "Entry", "McpGateway",
    "McpService", "McpSettings", "Pin", "PinStore", "Registry", "RegistryError", "RegistryFile", "SecretMissing",
    "SecretStore", "Server", "Upstream", "UpstreamError", "build", "definition_diff", "load_registry",
    "parse_registry", "save_registry", "split_tool_name", "tool_name",
]
