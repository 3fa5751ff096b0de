"""What one sandboxed worker gets, decided by the broker from the policy, whatever the backend."""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from caduceus_sandbox.channels import Channel
from caduceus_sandbox.policy import SandboxPolicy

Role = Literal["planner", "executor"]


@dataclass(frozen=True)
class SandboxPlan:
    """One worker process: its command and environment, what it may read and write, and its channels.

    `home` (its Hermes profile) is writable but for its `home_read_only` entries (the agent's own configuration
    and plugins: a worker must not change what it is); `workspace` is writable and given to executors only.
    `runtime` is read-only: the interpreter and the packages the worker imports, and the public keys.
    `run_dir` is the broker's private directory for this sandbox (sockets, generated files).
    """

    role: Role
    policy: SandboxPolicy
    command: tuple[str, ...]
    env: dict[str, str]
    home: Path
    run_dir: Path
    home_read_only: tuple[str, ...] = ()
    workspace: Path | None = None
    runtime: tuple[Path, ...] = ()
    channels: tuple[Channel, ...] = ()
    pass_fds: tuple[int, ...] = ()
    # The read end of a pipe whose write end is bubblewrap's stdin (the one descriptor its monitor
    # process keeps): the launcher inside ends the sandbox when it closes, i.e. when bubblewrap is gone.
    life_fd: int | None = None
    secret_files: bool = False
    hostname: str = "caduceus-sandbox"

    @property
    def cwd(self) -> Path:
        return self.workspace if self.workspace is not None else self.home


def python_runtime(packages: tuple[str, ...]) -> tuple[Path, ...]:
    """Read-only paths a Python worker needs: this interpreter, its virtualenv, and `packages` wherever
    they are installed (an editable install keeps them outside the virtualenv).
    """
    paths = {Path(os.path.realpath(sys.base_prefix)), Path(sys.prefix)}
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(f"{name} is not installed; the sandboxed worker needs it")
        paths.add(Path(next(iter(spec.submodule_search_locations))))
    return tuple(sorted(paths))
