"""`caduceus demo`, the README's first command, played against a running embedded stack: every scenario (the
MCP gateway's too), every step checked by the demo itself, and exit 0 only when all of them happened."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from caduceus.cli import app

pytestmark = pytest.mark.timeout(400)


async def test_the_demo_plays_every_scenario_on_a_running_stack_and_again(stack) -> None:
    result = await asyncio.to_thread(CliRunner().invoke, app, ["demo", "--state-dir", str(stack.layout.root),
                                                               "--timeout", "120"], env={"COLUMNS": "200"})
    output = result.output
    assert result.exit_code == 0, output
    assert "demo passed: every step happened as governed" in output
    assert "✗" not in output
    for step in ("the terminal call ran in the executor process", "the denied write never ran",
                 "carol approved it through the approvals API",
                 "the approved command ran in the executor and the turn finished with its result",
                 # the MCP scenario: the demo's own MCP server, registered for acme's workspace
                 "alice's agent called mcp__warehouse__stock; its first use waited for an admin's approval",
                 "carol approved the first use, which pinned the tool's definition",
                 "the MCP gateway ran the approved call and alice's reply carries the tool's result",
                 "the next call of the pinned tool ran without asking",
                 "after the server changed the tool's description, the call was withheld and alice was told why"):
        assert f"✓ {step}" in output, output
    # The next steps run as printed: they name the state dir the demo used.
    root = stack.layout.root
    assert f"talk to the agent: caduceus chat --tenant acme --user alice --state-dir {root} hello" in output
    assert "read what happened: caduceus audit timeline --session " in output and f"--state-dir {root}" in output

    # Again (the README's first command often is), for a script: the MCP scenario starts from a first use again,
    # though the last run pinned the tool and left the server's description changed.
    again = await asyncio.to_thread(CliRunner().invoke, app, ["demo", "--state-dir", str(root), "--timeout", "120",
                                                              "--json"])
    assert again.exit_code == 0, again.stderr
    body = json.loads(again.stdout)
    assert body["ok"] and len(body["sessions"]) == 5  # the two native scenarios' turns and the three MCP turns
    assert [c["ok"] for c in body["checks"]][-5:] == [True] * 5
