"""The workers' last lines of defence, inside real Hermes with the Caduceus plugin loaded as the broker loads it.

In an executor, Hermes runs a tool only for the call the executor has just verified and authorized: no other
call, not the same call with other arguments, not the authorized call a second time. In a planner with no
gateway connected, every call is denied and nothing runs. Each case asks Hermes's own dispatcher
(`model_tools.handle_function_call`) to run a shell command that would leave a mark in the workspace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from caduceus_broker.profiles import write_profile

pytestmark = pytest.mark.timeout(120)

PROBE = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    workspace = Path(sys.argv[1])
    import model_tools
    from hermes_cli.plugins import discover_plugins, has_middleware
    from caduceus_hermes_plugin import gate

    discover_plugins()
    assert has_middleware("tool_execution"), "the plugin did not load"

    def run(command):
        return str(model_tools.handle_function_call("terminal", {"command": command}, task_id="t",
                                                    session_id="s", enabled_toolsets=["terminal"]))

    mark = lambda name: f"echo ran >> {workspace / name}"
    results = {"unauthorized": run(mark("unauthorized"))}
    with gate.authorized("terminal", {"command": mark("decided")}):
        results["other_arguments"] = run(mark("not-decided"))
        results["authorized"] = run(mark("decided"))
        results["second_use"] = run(mark("decided"))
    print(json.dumps(results))
""")


def run_hermes(tmp_path: Path, role: str) -> tuple[dict[str, str], Path]:
    home, workspace = write_profile(tmp_path / f"{role}-home"), tmp_path / "workspace"
    workspace.mkdir()
    env = {**os.environ, "HERMES_HOME": str(home), "CADUCEUS_WORKER_ROLE": role, "TERMINAL_CWD": str(workspace)}
    result = subprocess.run([sys.executable, "-c", PROBE, str(workspace)], env=env, cwd=workspace,
                            capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), workspace


def marks(workspace: Path) -> dict[str, int]:
    return {path.name: len(path.read_text().splitlines()) for path in workspace.iterdir() if path.is_file()}


def test_an_executor_runs_only_the_one_call_it_authorized_and_only_once(tmp_path: Path) -> None:
    results, workspace = run_hermes(tmp_path, "executor")
    assert marks(workspace) == {"decided": 1}
    for refused in ("unauthorized", "other_arguments", "second_use"):
        assert "no verified decision authorizes this call" in results[refused], results[refused]


def test_a_planner_without_its_gateway_denies_every_call_and_runs_nothing(tmp_path: Path) -> None:
    results, workspace = run_hermes(tmp_path, "planner")
    assert marks(workspace) == {}  # not even the call an executor would have authorized
    for outcome in results.values():
        assert "gateway is not connected" in outcome and "nothing ran" in outcome, outcome
