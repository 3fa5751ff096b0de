"""What every `caduceus` command promises a script: one exit-code convention and one `--json` shape."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

OK, BAD, USAGE = 0, 1, 2

EXIT_CODES = ("Exit codes, the same for every command: 0 ok; 1 what was checked is bad (a pack, tenants file or "
              "sandbox policy that does not validate, a chain that does not verify, a failed test case, a token "
              "refused, nothing found); 2 a usage error, a file that cannot be read, or a stack, bus or service "
              "that cannot be reached.")

AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead of text: stable "
                                                     "field names, full values.")]


def print_json(document: Any) -> None:
    """One JSON document on stdout, on one line, with no markup and nothing shortened."""
    typer.echo(json.dumps(document, ensure_ascii=False, default=str))


def require_readable(path: Path, what: str, err: Console) -> Path:
    """`path` if it is a file this process can read; else say so and exit 2 (a usage error, not a bad file)."""
    if path.is_dir() or os.access(path, os.R_OK):
        return path
    problem = "does not exist" if not path.exists() else "cannot be read (check its permissions)"
    err.print(f"[red]{escape(what)} {escape(str(path))} {problem}[/red]")
    raise typer.Exit(USAGE)


def suggest(command: str, *arguments: str, **options: object) -> str:
    """A command to run next, repeating the options the user gave (pass None for one they left at its default).

    `suggest("caduceus chat", "hello", state_dir=Path("x"))` is `caduceus chat --state-dir x hello`.
    """
    words = [command]
    for name, value in options.items():
        if value is not None:
            words += [f"--{name.replace('_', '-')}", shlex.quote(str(value))]
    return " ".join(words + [shlex.quote(argument) for argument in arguments])
