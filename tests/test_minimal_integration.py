"""The README's minimal integration (examples/minimal_integration.py), run as a person would against the
running stack: a stranger gets pairing instructions, not the agent; once an admin approves the code, the same
platform user talks to the agent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from caduceus.cli import app
from caduceus_identity.devtoken import mint_dev_token

pytestmark = pytest.mark.timeout(240)
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "minimal_integration.py"


def run_example(stack, key: str, lines: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--tenant", "acme", "--platform", "line", "--key", key,
         "--nats", stack.info.nats_url, "--creds", stack.info.client_credentials, "--timeout", "120"],
        input=lines, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_minimal_integration_pairs_a_stranger_then_relays_the_agents_reply(stack) -> None:
    runner = CliRunner()
    created = runner.invoke(app, ["identity", "service-account", "create", "--tenant", "acme", "--name", "line-bot",
                                  "--platform", "line", "--state-dir", str(stack.layout.root)])
    assert created.exit_code == 0, created.output
    key = created.output.strip().splitlines()[-1]

    stranger = run_example(stack, key, "U42: hello\n")
    assert stranger.startswith("[U42] line user 'U42' is not linked to a person in tenant 'acme'")
    code = stranger.split("pairing code ")[1][:9]
    approved = runner.invoke(app, ["identity", "pairing", "approve", "--tenant", "acme", "--platform", "line",
                                   "--code", code, "--user", "bob", "--state-dir", str(stack.layout.root),
                                   "--token", mint_dev_token(stack.info.dev_issuer_url, "acme", "carol")])
    assert approved.exit_code == 0, approved.output

    paired = run_example(stack, key, "U42: hello\n")
    assert paired.startswith("[U42] Hello! I am the scripted model"), paired
