"""`caduceus identity`: dev tokens, service accounts for chat integrations, pairing chat-platform users."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from caduceus.identity_access import ISSUER_HELP, STATE_DIR_HELP, access, resolve_admin
from caduceus.scripting import BAD, USAGE, AsJson, print_json, suggest
from caduceus_contracts import utcnow
from caduceus_embedded import default_state_dir, read_stack_info
from caduceus_identity import DevTokenError, PairingRefused, approve_pairing, mint_dev_token, shown_code
from caduceus_oidc import Refused

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)

identity_app = typer.Typer(
    help="Identities: dev tokens, service accounts for chat integrations, and linking chat-platform users "
         "(Slack, Discord) to people by pairing code.",
    no_args_is_help=True)
accounts_app = typer.Typer(
    help="Service accounts: a chat integration's API key for one tenant and its platforms. The key is shown "
         "once, stored only as a hash, and can be revoked.", no_args_is_help=True)
pairing_app = typer.Typer(
    help="Pairing: a chat-platform user Caduceus does not know gets a code in chat; a tenant owner or admin "
         "approves it here to link that user to a person. Codes expire after an hour; five wrong codes lock "
         "pairing for the platform for an hour.", no_args_is_help=True)
identity_app.add_typer(accounts_app, name="service-account")
identity_app.add_typer(pairing_app, name="pairing")

StateDir = Annotated[Path | None, typer.Option("--state-dir", help=STATE_DIR_HELP)]
Tenant = Annotated[str, typer.Option("--tenant", help="The tenant, e.g. acme.")]


@identity_app.command("token")
def token(
    tenant: str = typer.Option(..., "--tenant", help="Tenant of the user, e.g. acme."),
    user: str = typer.Option(..., "--user", help="User name in that tenant, e.g. alice."),
    roles: str | None = typer.Option(None, "--roles", help="Comma-separated roles (groups, to the token) to claim; "
                                                            "they count only where the tenant's `groups:` maps "
                                                            "them to roles."),
    ttl_s: int | None = typer.Option(None, "--ttl", help="Lifetime in seconds (default 3600, at most 86400)."),
    audience: str | None = typer.Option(None, "--audience", help="The resource the token is for (default: chat, "
                                                                  "`caduceus`); the MCP endpoint wants "
                                                                  "`caduceus-mcp`."),
    issuer_url: str | None = typer.Option(None, "--issuer-url", help="Dev issuer URL (default: the running "
                                                                      "stack's)."),
    state_dir: Path | None = typer.Option(None, "--state-dir", help="State dir of the running stack "
                                                                     "(default: CADUCEUS_STATE_DIR or the user "
                                                                     "data dir)."),
    as_json: AsJson = False,
) -> None:
    """Mint a token from the dev OIDC issuer; the token is the last line printed."""
    if issuer_url is None:
        directory = state_dir or default_state_dir()
        stack = read_stack_info(directory)
        if stack is None:
            typer.echo(f"no running Caduceus stack found in {directory}: start one with "
                       f"`{suggest('caduceus up', state_dir=state_dir)}`, or pass --issuer-url (or --state-dir)",
                       err=True)
            raise typer.Exit(USAGE)
        issuer_url = stack.dev_issuer_url
    role_list = [role.strip() for role in roles.split(",") if role.strip()] if roles is not None else None
    try:
        minted = mint_dev_token(issuer_url, tenant, user, role_list, ttl_s, audience=audience)
    except DevTokenError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(USAGE) from None
    if as_json:
        print_json({"token": minted, "tenant": tenant, "user": user, "issuer": issuer_url})
        return
    typer.echo(f"token for {user}@{tenant} from {issuer_url}:", err=True)
    typer.echo(minted)


def local_operator() -> str:
    """Who changes identity.db from this machine's CLI, as the audit trail records it."""
    return f"{getpass.getuser()} (local CLI)"


@accounts_app.command("create")
def create_account(
    tenant: Tenant,
    name: Annotated[str, typer.Option(help="A name for the integration, e.g. slack-bot.")],
    platform: Annotated[list[str], typer.Option(help="A platform it speaks for (repeat: --platform slack "
                                                     "--platform discord).")],
    state_dir: StateDir = None,
    as_json: AsJson = False,
) -> None:
    """Create a service account; its API key is the last line printed, and never shown again."""
    where = access(state_dir)
    if tenant not in where.directory()().tenants:
        err.print(f"[red]no tenant {tenant!r} in {where.tenants_file}[/red]: add it with "
                  f"`{escape(suggest('caduceus tenants apply', 'TENANTS.yaml', state_dir=state_dir))}`")
        raise typer.Exit(USAGE)
    store = where.store()
    try:
        account, key = store.create_service_account(tenant, name, tuple(platform), utcnow(), local_operator())
    except ValueError as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(USAGE) from None
    finally:
        store.close()
    if as_json:
        print_json({"name": account.name, "tenant": tenant, "platforms": list(account.platforms), "key": key})
        return
    err.print(f"service account {account.name} of {tenant} for {', '.join(account.platforms)}; "
              "store this key now, it is not shown again:")
    typer.echo(key)


@accounts_app.command("list")
def list_accounts(tenant: Tenant, state_dir: StateDir = None, as_json: AsJson = False) -> None:
    """Service accounts of a tenant (never their keys)."""
    store = access(state_dir).store()
    if as_json:
        accounts = store.service_accounts(tenant)
        store.close()
        print_json({"tenant": tenant, "service_accounts": [
            {"name": a.name, "platforms": list(a.platforms), "created_at": a.created_at.isoformat(),
             "revoked_at": a.revoked_at.isoformat() if a.revoked_at else None} for a in accounts]})
        return
    table = Table(show_edge=False)
    for column in ("name", "platforms", "created", "revoked"):
        table.add_column(column)
    for account in store.service_accounts(tenant):
        table.add_row(escape(account.name), ", ".join(account.platforms),
                      account.created_at.isoformat(timespec="seconds"),
                      account.revoked_at.isoformat(timespec="seconds") if account.revoked_at else "")
    store.close()
    out.print(table)


@accounts_app.command("revoke")
def revoke_account(tenant: Tenant, name: Annotated[str, typer.Option(help="The service account's name.")],
                   state_dir: StateDir = None) -> None:
    """Revoke a service account: its key is refused from the next message on."""
    store = access(state_dir).store()
    revoked = store.revoke_service_account(tenant, name, utcnow(), local_operator())
    store.close()
    if not revoked:
        err.print(f"[red]tenant {tenant!r} has no live service account named {name!r}[/red]")
        raise typer.Exit(BAD)
    out.print(f"revoked {name} of {tenant}")


@pairing_app.command("list")
def list_pairings(tenant: Tenant, state_dir: StateDir = None, as_json: AsJson = False) -> None:
    """Platform users waiting for approval, and the platform users already linked to people."""
    store = access(state_dir).store()
    waiting = store.pending_pairings(tenant, utcnow())
    links = store.links(tenant)
    store.close()
    if as_json:
        print_json({"tenant": tenant,
                    "waiting": [{"platform": platform, "platform_user": who, "until": until.isoformat()}
                                for platform, who, until in waiting],
                    "links": [{"platform": link.platform, "platform_user": link.platform_user, "user": link.user,
                               "linked_by": link.linked_by} for link in links]})
        return
    out.print(f"waiting for approval in {tenant}: " + (", ".join(
        f"{platform} user {escape(who)} (until {until:%H:%M} UTC)" for platform, who, until in waiting) or "none"))
    for link in links:
        out.print(f"  {link.platform} {escape(link.platform_user)} -> {escape(link.user)} ({escape(link.linked_by)})")


@pairing_app.command("approve")
def approve(
    tenant: Tenant,
    code: Annotated[str, typer.Option(help="The code the person got in chat, e.g. ABCD-EFGH.")],
    user: Annotated[str, typer.Option(help="The person in tenants.yaml to link the platform user to.")],
    token: Annotated[str, typer.Option(help="Your OIDC token: you must be an owner or admin of the tenant.",
                                       envvar="CADUCEUS_TOKEN")],
    platform: Annotated[str, typer.Option(help="The platform the code was issued on.")] = "slack",
    state_dir: StateDir = None,
    issuer_url: Annotated[str | None, typer.Option(help=ISSUER_HELP)] = None,
) -> None:
    """Approve a pairing code as a tenant admin: the platform user who got it becomes `--user`."""
    where = access(state_dir, issuer_url=issuer_url)
    admin = resolve_admin(where, token, tenant)
    store = where.store()
    try:
        link = approve_pairing(store, where.directory()(), admin, platform, code, user, utcnow())
    except (PairingRefused, Refused) as exc:
        err.print(f"[red]not approved:[/red] {escape(str(exc))}")
        raise typer.Exit(BAD) from None
    finally:
        store.close()
    out.print(f"{link.platform} user {escape(link.platform_user)} is now {escape(link.user)} in {tenant} "
              f"(approved by {escape(admin.name)}, code {shown_code(code.replace('-', '').upper())})")


@pairing_app.command("unlink")
def unlink(tenant: Tenant, platform: Annotated[str, typer.Option(help="slack, discord, ...")],
           platform_user: Annotated[str, typer.Option(help="The platform's user id.")],
           token: Annotated[str, typer.Option(help="Your OIDC token (a tenant owner or admin).",
                                              envvar="CADUCEUS_TOKEN")],
           state_dir: StateDir = None,
           issuer_url: Annotated[str | None, typer.Option(help=ISSUER_HELP)] = None) -> None:
    """Remove a platform user's link: their next message gets a new pairing code."""
    where = access(state_dir, issuer_url=issuer_url)
    admin = resolve_admin(where, token, tenant)
    store = where.store()
    removed = store.remove_link(tenant, platform, platform_user, utcnow(), admin.name)
    store.close()
    if not removed:
        err.print(f"[red]{platform} user {platform_user!r} is not linked in {tenant!r}[/red]")
        raise typer.Exit(BAD)
    out.print(f"unlinked {platform} user {escape(platform_user)} in {tenant}")


def register(app: typer.Typer) -> None:
    app.add_typer(identity_app, name="identity")
