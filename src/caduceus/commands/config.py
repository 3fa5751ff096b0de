"""`caduceus config reference`: every setting of every process, from the settings models (docs/configuration.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

err = Console(stderr=True, soft_wrap=True, highlight=False)
config_app = typer.Typer(help="The configuration every process reads from the environment.", no_args_is_help=True)


@config_app.command("reference")
def reference(
    ctx: typer.Context,
    write: Annotated[Path | None, typer.Option("--write", help="Write the reference here, e.g. "
                                                               "docs/configuration.md.")] = None,
    check: Annotated[Path | None, typer.Option("--check", help="Exit 1 if this file differs from what the "
                                                               "code defines.")] = None,
) -> None:
    """Print every CADUCEUS_ variable with its type, default and meaning, as the settings models define them.

    With --check it compares instead (for CI: exit 1 when the file is stale); with --write it updates.
    """
    from caduceus.config_reference import render

    text = render(ctx.find_root().command)  # the whole CLI, for the options it reads from the environment
    if check:
        if not check.exists() or check.read_text(encoding="utf-8") != text:
            err.print(f"{escape(str(check))} differs from the code: run `caduceus config reference --write "
                      f"{escape(str(check))}`")
            raise typer.Exit(1)
        return
    if write:
        try:
            write.parent.mkdir(parents=True, exist_ok=True)
            write.write_text(text, encoding="utf-8")
        except OSError as exc:
            err.print(f"[red]error:[/red] cannot write {escape(str(write))}: {escape(exc.strerror or str(exc))}")
            raise typer.Exit(2) from None
        err.print(f"wrote {escape(str(write))}")
        return
    print(text, end="")


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
