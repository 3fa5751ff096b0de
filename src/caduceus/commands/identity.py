"""`caduceus identity`: tokens from the dev OIDC issuer."""

from __future__ import annotations

from pathlib import Path

import typer

from caduceus_embedded.stackinfo import default_state_dir, read_stack_info
from caduceus_identity.devtoken import DevTokenError, mint_dev_token

identity_app = typer.Typer(help="Identities: mint a dev token for a person in tenants.yaml.", no_args_is_help=True)


@identity_app.command("token")
def token(
    tenant: str = typer.Option(..., "--tenant", help="Tenant of the user, e.g. acme."),
    user: str = typer.Option(..., "--user", help="User name in that tenant, e.g. alice."),
    roles: str | None = typer.Option(None, "--roles", help="Comma-separated roles to claim (default: the user's "
                                                            "roles in tenants.yaml)."),
    ttl_s: int | None = typer.Option(None, "--ttl", help="Lifetime in seconds (default 3600, at most 86400)."),
    issuer_url: str | None = typer.Option(None, "--issuer-url", help="Dev issuer URL (default: the running "
                                                                      "stack's)."),
    state_dir: Path | None = typer.Option(None, "--state-dir", help="State dir of the running stack "
                                                                     "(default: CADUCEUS_STATE_DIR or the user "
                                                                     "data dir)."),
) -> None:
    """Mint a token from the dev OIDC issuer; the token is the last line printed."""
    if issuer_url is None:
        directory = state_dir or default_state_dir()
        stack = read_stack_info(directory)
        if stack is None:
            typer.echo(f"no running Caduceus stack found in {directory}: start one with `caduceus up`, "
                       "or pass --issuer-url (or --state-dir)", err=True)
            raise typer.Exit(1)
        issuer_url = stack.dev_issuer_url
    role_list = [role.strip() for role in roles.split(",") if role.strip()] if roles is not None else None
    try:
        minted = mint_dev_token(issuer_url, tenant, user, role_list, ttl_s)
    except DevTokenError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"token for {user}@{tenant} from {issuer_url}:", err=True)
    typer.echo(minted)


def register(app: typer.Typer) -> None:
    app.add_typer(identity_app, name="identity")
