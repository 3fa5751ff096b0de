"""Hermes profiles (HERMES_HOME directories) the broker writes for each worker.

Each tenant/workspace gets its own planner and executor home, so memory and
sessions never mix across tenants. Caduceus makes the decisions: Hermes's own
approval prompts and Tirith scanning are off, and the Caduceus plugin is on.
"""

from __future__ import annotations

from pathlib import Path

import yaml

HERMES_CONFIG = {
    "plugins": {"enabled": ["caduceus"]},
    "approvals": {"mode": "manual"},
    "security": {"tirith_enabled": False},
    # Hermes would otherwise append its own verifier notes and "[System: ...]" turns to a reply.
    "display": {"file_mutation_verifier": False},
    "agent": {"verify_on_stop": False},
}


def write_profile(home: Path) -> Path:
    """Create (or refresh) a Hermes home with the Caduceus configuration; returns the home."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text(yaml.safe_dump(HERMES_CONFIG, sort_keys=False))
    return home


def worker_paths(workers_dir: Path, workspaces_dir: Path, tenant: str, workspace: str) -> dict[str, Path]:
    base = workers_dir / tenant / workspace
    return {
        "planner_home": base / "planner-home",
        "executor_home": base / "executor-home",
        "workspace": workspaces_dir / tenant / workspace,
        "logs": base / "logs",
        "credentials": base / "credentials",
    }
