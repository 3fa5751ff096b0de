"""`caduceus whoami --token ...`: how a token resolves (tenant, person, roles), or why it is refused."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from caduceus.identity_access import ISSUER_HELP, STATE_DIR_HELP, TENANTS_FILE_HELP, access
from caduceus.scripting import BAD, AsJson, print_json
from caduceus_identity import looks_like_api_key
from caduceus_oidc import Refused

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)


def register(app: typer.Typer) -> None:
    app.command(help="Show how a token resolves: tenant, person, roles, approval mode and memory scope (exit 0), "
                     "or why Caduceus refuses it (exit 1). The token is checked exactly as identity checks it: "
                     "signature against the issuer's published keys, issuer, audience, expiry, then tenants.yaml."
                     "\n\nExample: caduceus whoami --token \"$(caduceus identity token --tenant acme --user alice | "
                     "tail -1)\"")(whoami)


def whoami(
    token: Annotated[str, typer.Option(help="An OIDC token, or a service-account key.", envvar="CADUCEUS_TOKEN")],
    tenant: Annotated[str | None, typer.Option(help="The tenant you mean, when several trust the token's issuer.")]
    = None,
    state_dir: Annotated[Path | None, typer.Option(help=STATE_DIR_HELP)] = None,
    tenants_file: Annotated[Path | None, typer.Option(help=TENANTS_FILE_HELP)] = None,
    issuer_url: Annotated[str | None, typer.Option(help=ISSUER_HELP)] = None,
    as_json: AsJson = False,
) -> None:
    where = access(state_dir, tenants_file, issuer_url)
    if looks_like_api_key(token):
        account = where.service_account(token)
        if account is None:
            _refuse("the service-account key is unknown or revoked",
                    "ask an admin of the tenant for a live key", as_json)
        if as_json:
            print_json({"ok": True, "kind": "service-account", "name": account.name, "tenant": account.tenant,
                        "platforms": list(account.platforms)})
            return
        out.print(f"service account [bold]{escape(account.name)}[/bold] of tenant [bold]{account.tenant}[/bold]")
        out.print(f"speaks for: {', '.join(account.platforms)} users (linked or paired people)")
        return
    try:
        identity, member = asyncio.run(where.resolve(token, tenant))
    except Refused as refused:
        _refuse(refused.reason, refused.remedy, as_json)
    tenant_entry = where.directory()().tenants[member.tenant]
    if as_json:
        print_json({"ok": True, "kind": "person", "tenant": member.tenant, "user": member.name,
                    "listed": member.listed, "roles": list(member.roles), "approval_mode": member.approval_mode,
                    "memory": tenant_entry.memory, "issuer": identity.issuer, "groups": list(identity.groups),
                    "expires_at": identity.expires_at.isoformat() if identity.expires_at else None})
        return
    out.print(f"tenant: {member.tenant}")
    out.print(f"user: {escape(member.name)}" + ("" if member.listed else " (admitted by group)"))
    out.print(f"roles: {', '.join(member.roles)}")
    out.print(f"approval mode: {member.approval_mode or 'set by the policy pack'}")
    scope = {"tenant": "the tenant's", "user": f"{member.name}'s own", "channel": "the channel's"}[tenant_entry.memory]
    out.print(f"memory: {escape(scope)}")
    out.print(f"issuer: {escape(identity.issuer)}" + (f", groups {escape(', '.join(identity.groups))}"
                                                       if identity.groups else ""))
    if identity.expires_at is not None:
        out.print(f"token expires: {identity.expires_at.isoformat(timespec='seconds')}")


def _refuse(reason: str, remedy: str, as_json: bool) -> NoReturn:
    """Why the token is refused and what to do (exit 1); with --json, also as the one document on stdout."""
    err.print(f"[red]refused:[/red] {escape(reason)}")
    err.print(f"what to do: {escape(remedy)}")
    if as_json:
        print_json({"ok": False, "refused": reason, "remedy": remedy})
    raise typer.Exit(BAD)
