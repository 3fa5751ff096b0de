"""The registry file: every problem reported at once with its line; what a valid file means."""

from __future__ import annotations

import pytest

from caduceus_mcp import Registry, RegistryError, Server, parse_registry, split_tool_name, tool_name

GOOD = """\
tenants:
  acme:
    servers:
      files:
        scope: {workspaces: [default]}
        command: [python, -m, files_server]
        approvers: admin
        pin: workspace
        credentials: {env: {FILES_TOKEN: files-token}}
      web:
        url: https://mcp.example.com/mcp
        credentials: {headers: {Authorization: "Bearer {web-token}"}}
"""


def test_a_valid_registry_scopes_servers_to_tenants_and_workspaces() -> None:
    registry = parse_registry(GOOD)
    assert [s.name for s in registry.for_workspace("acme", "default")] == ["files", "web"]
    assert [s.name for s in registry.for_workspace("acme", "research")] == ["web"]
    assert registry.for_workspace("globex", "default") == []
    files = registry.server("acme", "files")
    assert files.transport == "stdio" and files.pin_workspace("default") == "default"
    assert registry.server("acme", "web").credentials.secret_names() == ("web-token",)


def test_every_problem_is_reported_at_once_with_its_line() -> None:
    bad = """\
tenants:
  acme:
    servers:
      Bad__Name:
        command: [x]
      both:
        command: [x]
        url: http://h/mcp
      leaky:
        url: http://h/mcp
        credentials: {headers: {Authorization: "Bearer sk-live-123"}}
      odd:
        command: [x]
        scope: everywhere
        colour: blue
"""
    with pytest.raises(RegistryError) as raised:
        parse_registry(bad, "mcp.yaml")
    problems = raised.value.problems
    assert any(p.startswith("line 4:") and "server name" in p for p in problems)
    assert any(p.startswith("line 6:") and "exactly one of command" in p for p in problems)
    assert any(p.startswith("line 11:") and "plain text" in p for p in problems)
    assert any(p.startswith("line 14:") and "scope" in p for p in problems)
    assert any(p.startswith("line 15:") and "colour" in p for p in problems)
    assert len(problems) == 5


def test_invalid_yaml_names_its_line() -> None:
    with pytest.raises(RegistryError, match="line 3: not valid YAML"):
        parse_registry("tenants:\n  acme:\n    servers: {a: [}\n  b: 1\n")


def test_the_registry_round_trips_through_its_file_form() -> None:
    registry = parse_registry(GOOD)
    assert parse_registry(registry.to_yaml()) == registry
    smaller = registry.without_server("acme", "web").with_server(
        Server(tenant="globex", name="db", transport="http", url="http://db/mcp"))
    assert parse_registry(smaller.to_yaml()) == smaller
    assert Registry().to_yaml().count("tenants") == 1


@pytest.mark.parametrize("server, tool", [("files", "read"), ("a-b", "x__y"), ("a_b", "c")])
def test_governed_names_split_back_into_server_and_tool(server, tool) -> None:
    assert split_tool_name(tool_name(server, tool)) == (server, tool)


@pytest.mark.parametrize("name", ["terminal", "mcp__", "mcp__files", "mcp____x", "mcp__files__"])
def test_names_that_are_not_mcp_tools_do_not_split(name) -> None:
    assert split_tool_name(name) is None
