"""`caduceus`: the operator's entry point. Each command group lives in caduceus.commands.<name>."""

from __future__ import annotations

import typer

from caduceus.commands import (
    approvals,
    audit,
    backup,
    bus,
    chat,
    config,
    demo,
    deployment,
    identity,
    mcp,
    policy,
    sandbox,
    slack,
    tenants,
    up,
    usage,
    whoami,
)
from caduceus.scripting import EXIT_CODES

app = typer.Typer(
    name="caduceus",
    help="Caduceus, the enterprise control plane for Hermes Agent.\n\n"
    "Start here: `caduceus demo` runs the embedded stack and one governed chat turn; "
    "`caduceus up` keeps the stack running; `caduceus chat` talks to it.\n\n"
    "Every command that prints data takes --json (one JSON document on stdout). " + EXIT_CODES,
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
)
up.register(app)
chat.register(app)
demo.register(app)
identity.register(app)
approvals.register(app)
sandbox.register(app)
tenants.register(app)
whoami.register(app)
policy.register(app)
audit.register(app)
bus.register(app)
backup.register(app)
config.register(app)
deployment.register(app)
slack.register(app)
mcp.register(app)
usage.register(app)


if __name__ == "__main__":
    app()
