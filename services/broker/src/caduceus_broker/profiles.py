"""Hermes profiles (HERMES_HOME directories) the broker writes for each worker, and memory scopes within them.

Each tenant/workspace gets its own planner and executor home, so memory and
sessions never mix across tenants. Within a planner home, each memory scope a
grant names (the tenant, a user, a channel) gets its own Hermes home under
`memory-scopes/`: its own `memories/` (MEMORY.md, USER.md) and sessions, the
planner's config. Caduceus makes the decisions: Hermes's own approval prompts
and Tirith scanning are off, and the Caduceus plugin is on.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import yaml

HERMES_CONFIG = {
    "plugins": {"enabled": ["caduceus"]},
    "approvals": {"mode": "manual"},
    "security": {"tirith_enabled": False},
    # Hermes would otherwise append its own verifier notes and "[System: ...]" turns to a reply.
    "display": {"file_mutation_verifier": False},
    "agent": {"verify_on_stop": False},
    # Memory on, in the turn's scope; no background review turns (nudge_interval 0) the person did not ask for.
    "memory": {"memory_enabled": True, "user_profile_enabled": True, "nudge_interval": 0},
}
MEMORY_SCOPES_DIR = "memory-scopes"
# A scope name used as a directory as it is; anything else (slashes, dots, odd characters) by its hash.
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_@+=,-]{0,127}$")


# What of a Hermes home its sandboxed worker may not change: its configuration, and the plugins directory (a
# `plugins/caduceus` written there would shadow the real plugin at the next start).
PROTECTED_IN_HOME = ("config.yaml", "plugins")


def write_profile(home: Path) -> Path:
    """Create (or refresh) a Hermes home with the Caduceus configuration; returns the home."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text(yaml.safe_dump(HERMES_CONFIG, sort_keys=False))
    (home / "plugins").mkdir(exist_ok=True)
    return home


def worker_paths(workers_dir: Path, workspaces_dir: Path, tenant: str, workspace: str) -> dict[str, Path]:
    base = workers_dir / tenant / workspace
    return {
        "planner_home": base / "planner-home",
        "executor_home": base / "executor-home",
        "workspace": workspaces_dir / tenant / workspace,
        "logs": base / "logs",
    }


def scope_home(planner_home: Path, memory_scope: str) -> Path:
    """The Hermes home a turn with this memory scope runs in (made on first use), e.g. `memory-scopes/user/alice`.

    `memory_scope` is a grant's: `tenant`, `user:<name>` or `channel:<name>`.
    """
    kind, _, name = memory_scope.partition(":")
    if kind == "tenant" and not name:
        home = planner_home / MEMORY_SCOPES_DIR / "tenant"
    elif kind in ("user", "channel") and name:
        plain = _PLAIN_NAME.fullmatch(name)
        home = planner_home / MEMORY_SCOPES_DIR / kind / (name if plain else "~" + hashlib.sha256(
            name.encode()).hexdigest()[:32])
    else:
        raise ValueError(f"not a memory scope: {memory_scope!r}")
    home.mkdir(parents=True, exist_ok=True)
    # The scope's config is the planner's (read-only in the sandbox), through a link made again whenever it is
    # anything else: a file or another link written into the scope cannot configure the next turn.
    config, target = home / "config.yaml", planner_home / "config.yaml"
    if not config.is_symlink() or Path(os.readlink(config)) != target:
        if config.is_dir() and not config.is_symlink():
            shutil.rmtree(config)
        config.unlink(missing_ok=True)
        config.symlink_to(target)
    return home
