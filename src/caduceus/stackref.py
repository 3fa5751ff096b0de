"""Finding the running stack from a command."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from caduceus.scripting import USAGE, suggest
from caduceus_embedded import StackInfo, default_state_dir, read_stack_info


def require_stack(state_dir: Path | None, err: Console) -> StackInfo:
    """The stack running in `state_dir` (the one given, else the default), or exit 2 saying how to start it."""
    info = read_stack_info(state_dir or default_state_dir())
    if info is None:
        err.print(f"[red]no Caduceus stack is running in {state_dir or default_state_dir()}[/red]: start one with "
                  f"`{escape(suggest('caduceus up', state_dir=state_dir))}` (or pass --state-dir where it runs)")
        raise typer.Exit(USAGE)
    return info
