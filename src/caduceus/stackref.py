"""Finding the running stack from a command."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from caduceus_embedded import StackInfo, default_state_dir, read_stack_info


def require_stack(state_dir: Path | None, err: Console) -> StackInfo:
    state_dir = state_dir or default_state_dir()
    info = read_stack_info(state_dir)
    if info is None:
        err.print(f"[red]no Caduceus stack is running in {state_dir}[/red]: start one with `caduceus up` "
                  "(or pass --state-dir where it runs)")
        raise typer.Exit(1)
    return info
