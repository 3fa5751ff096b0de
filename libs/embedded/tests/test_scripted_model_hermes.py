"""Real Hermes (no Caduceus plugin) runs the default scenarios against the scripted model over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERMES_TURN = Path(__file__).with_name("hermes_turn.py")
DEMO_MESSAGE = "Please check the workspace and leave a note in /etc/caduceus-demo.txt"


def run_hermes(base_url: str, tmp_path: Path, message: str, *toolsets: str) -> dict:
    workdir = tmp_path / "workspace"
    workdir.mkdir(exist_ok=True)
    result = subprocess.run([sys.executable, str(HERMES_TURN), base_url, str(tmp_path / "hermes-home"), str(workdir),
                             message, *toolsets], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_hermes_plays_the_demo_and_returns_the_summary(scripted_model, tmp_path: Path) -> None:
    outcome = run_hermes(scripted_model.base_url, tmp_path, DEMO_MESSAGE, "terminal", "file")
    assert outcome["tool_calls"][:2] == [
        {"name": "terminal", "arguments": {"command": "echo hello from the executor && pwd"}},
        {"name": "write_file", "arguments": {"path": "/etc/caduceus-demo.txt", "content": "note from the agent"}},
    ]
    terminal_result = json.loads(outcome["tool_results"][0])
    assert terminal_result["output"] == f"hello from the executor\n{tmp_path / 'workspace'}"
    # Hermes's own write_file refuses system paths, whatever any policy says.
    assert "Refusing to write to sensitive system path" in outcome["tool_results"][1]
    assert outcome["final_response"].startswith("I checked the workspace")
    assert "hello from the executor" in outcome["final_response"]


def test_hermes_noop_reads_the_todo_list(scripted_model, tmp_path: Path) -> None:
    outcome = run_hermes(scripted_model.base_url, tmp_path, "noop", "todo")
    assert outcome["tool_calls"] == [{"name": "todo", "arguments": {}}]
    assert json.loads(outcome["tool_results"][0])["todos"] == []
    assert outcome["final_response"] == "done"
