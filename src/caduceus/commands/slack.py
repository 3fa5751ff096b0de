"""`caduceus slack check`: is slack.yaml (the gateway's Slack workspaces) usable, before the gateway reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from caduceus.scripting import BAD, AsJson, print_json, require_readable
from caduceus_embedded import default_state_dir
from caduceus_gateway import SlackConfigError, load_slack_config

slack_app = typer.Typer(
    help="Slack for the chat gateway: each workspace in <state dir>/slack.yaml is an installation for one tenant "
    "(docs/slack.md takes a Slack app from its manifest to the first approved call).",
    no_args_is_help=True)
err = Console(stderr=True, soft_wrap=True, highlight=False)


@slack_app.command("check")
def check(file: Annotated[Path | None, typer.Argument(help="slack.yaml to check (default: the state dir's).")] = None,
          state_dir: Annotated[Path | None, typer.Option("--state-dir", help="The stack's state dir.")] = None,
          as_json: AsJson = False) -> None:
    """Check slack.yaml as the gateway reads it: every problem with its line, and every secret reference
    (env:NAME, file:PATH) resolved here, so run it where the gateway runs (its environment and files).

    Exit 0: usable. Exit 1: refused, with the problems. Exit 2: the file cannot be read.
    """
    path = file or (state_dir or default_state_dir()) / "slack.yaml"
    require_readable(path, "Slack configuration", err)
    try:
        config = load_slack_config(path)
    except SlackConfigError as exc:
        typer.echo(f"refused: {exc}", err=True)
        if as_json:
            print_json({"ok": False, "file": str(path), "problem": str(exc)})
        raise typer.Exit(BAD) from None
    workspaces = [{"team_id": ws.team_id, "tenant": ws.tenant, "mode": ws.mode, "workspace": ws.workspace,
                   "approvals_channel": ws.approvals_channel, "link_by_email": ws.link_by_email}
                  for ws in config.workspaces.values()]
    if as_json:
        print_json({"ok": True, "file": str(path), "workspaces": workspaces})
        return
    typer.echo(f"{path}: {len(workspaces)} Slack workspace(s), every secret found")
    for ws in workspaces:
        where = f"approvals in {ws['approvals_channel']}" if ws["approvals_channel"] else "approvals in DMs"
        typer.echo(f"  {ws['team_id']} -> tenant {ws['tenant']} ({ws['mode']}, workspace {ws['workspace']}, {where})")


def register(app: typer.Typer) -> None:
    app.add_typer(slack_app, name="slack")
