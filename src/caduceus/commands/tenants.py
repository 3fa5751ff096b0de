"""`caduceus tenants`: list, show and apply tenants.yaml (tenants, workspaces, people, roles, groups, issuers)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from caduceus.identity_access import STATE_DIR_HELP, TENANTS_FILE_HELP, access
from caduceus.scripting import BAD, USAGE, AsJson, print_json
from caduceus_directory import TIERS, Directory, DirectoryError, DirectoryUnreadable, Tenant, load_directory

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)

tenants_app = typer.Typer(
    help="Tenants, their workspaces and people (tenants.yaml): list them, show one, apply a new file.\n\n"
         "Roles are the tiers owner > admin > member > guest (each includes those below) plus a tenant's "
         "custom roles; `groups:` maps identity-provider groups to roles; `memory:` is tenant, user or channel.",
    no_args_is_help=True)

StateDir = Annotated[Path | None, typer.Option("--state-dir", help=STATE_DIR_HELP)]
TenantsFile = Annotated[Path | None, typer.Option("--tenants-file", help=TENANTS_FILE_HELP)]


def register(app: typer.Typer) -> None:
    app.add_typer(tenants_app, name="tenants")


@tenants_app.command("list")
def list_tenants(state_dir: StateDir = None, tenants_file: TenantsFile = None, as_json: AsJson = False) -> None:
    """One line per tenant: workspaces, people, memory scope, approval mode, trusted issuers."""
    directory = _read(access(state_dir, tenants_file).tenants_file)
    if as_json:
        print_json({"tenants": [tenant_json(name, tenant) for name, tenant in sorted(directory.tenants.items())]})
        return
    table = Table(show_edge=False)
    for column in ("tenant", "name", "workspaces", "users", "memory", "approval mode", "issuers"):
        table.add_column(column)
    for name, tenant in sorted(directory.tenants.items()):
        table.add_row(name, escape(tenant.display_name), ", ".join(tenant.workspaces), str(len(tenant.users)),
                      tenant.memory, tenant.approval_mode or "(policy pack)",
                      escape(", ".join(i.url for i in tenant.issuers)) or "(the deployment's)")
    out.print(table)


@tenants_app.command("show")
def show(tenant: Annotated[str, typer.Argument(help="The tenant, e.g. acme.")],
         state_dir: StateDir = None, tenants_file: TenantsFile = None, as_json: AsJson = False) -> None:
    """Everything about one tenant: people with their effective roles, groups, custom roles, issuers."""
    directory = _read(access(state_dir, tenants_file).tenants_file)
    entry = directory.tenants.get(tenant)
    if entry is None:
        err.print(f"[red]no tenant {tenant!r}[/red] (tenants: {', '.join(sorted(directory.tenants)) or 'none'})")
        raise typer.Exit(BAD)
    if as_json:
        print_json(tenant_json(tenant, entry))
        return
    _show(tenant, entry)


def tenant_json(name: str, tenant: Tenant) -> dict:
    """A tenant as tenants.yaml has it, plus each person's effective roles (what policy and approval see)."""
    document = {"tenant": name, **tenant.model_dump(mode="json")}
    for user_name, user in tenant.users.items():
        document["users"][user_name]["effective_roles"] = list(tenant.effective_roles(set(user.roles)))
    return document


def _show(name: str, tenant: Tenant) -> None:
    out.print(f"[bold]{escape(name)}[/bold]: {escape(tenant.display_name)}")
    out.print(f"  workspaces: {', '.join(tenant.workspaces)}")
    out.print(f"  memory: one per {tenant.memory}" if tenant.memory != "tenant" else "  memory: one for the tenant")
    out.print(f"  approval mode: {tenant.approval_mode or 'set by the policy pack'}")
    people = Table(show_edge=False, title="people", title_justify="left")
    for column in ("user", "email", "roles (effective)", "approval mode"):
        people.add_column(column)
    for user_name, user in sorted(tenant.users.items()):
        people.add_row(escape(user_name), escape(user.email), ", ".join(tenant.effective_roles(set(user.roles))),
                       user.approval_mode or f"{tenant.approval_mode or 'policy pack'} (tenant)")
    out.print(people)
    if tenant.groups:
        out.print("  groups: " + "; ".join(f"{escape(group)} -> {', '.join(roles)}"
                                           for group, roles in sorted(tenant.groups.items())))
    custom = {role: entry.includes for role, entry in tenant.roles.items()}
    out.print(f"  roles: tiers {' > '.join(TIERS)}" + "".join(
        f"; {role} (includes {', '.join(includes) or 'nothing'})" for role, includes in sorted(custom.items())))
    for issuer in tenant.issuers:
        out.print(f"  issuer: {escape(issuer.url)} (audience {escape(issuer.audience)}, person from "
                  f"{escape(issuer.username_claim)!r}, groups from {escape(issuer.groups_claim)!r})")


@tenants_app.command("apply")
def apply(source: Annotated[Path, typer.Argument(help="The new tenants.yaml.", exists=True, dir_okay=False)],
          state_dir: StateDir = None, tenants_file: TenantsFile = None, as_json: AsJson = False) -> None:
    """Check a tenants file and make it the stack's; identity uses it for the next message, no restart.

    Nothing changes when the file has a problem: every problem is listed with where it is (exit 1; exit 2 when
    the file cannot be read).
    """
    new = _read(source, as_json)
    target = access(state_dir, tenants_file).tenants_file
    old = _current(target)
    text = source.read_text(encoding="utf-8")
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.with_name(f".{target.name}.new")
    staged.write_text(text, encoding="utf-8")
    os.replace(staged, target)
    changes = _changes(old, new)
    if as_json:
        print_json({"ok": True, "applied": str(source), "to": str(target), "tenants": sorted(new.tenants), "changes": changes})
        return
    for line in changes or ["no change to tenants or people"]:
        out.print(f"  {escape(line)}")
    out.print(f"applied {source} to {target}: {len(new.tenants)} tenant(s); identity uses it for the next message")


def _current(target: Path) -> Directory:
    """The tenants file being replaced; one that is missing or broken counts as empty (the new one fixes it)."""
    try:
        return load_directory(target)
    except DirectoryError:
        return Directory(tenants={})


def _changes(old: Directory, new: Directory) -> list[str]:
    lines = [f"+ tenant {name}" for name in sorted(set(new.tenants) - set(old.tenants))]
    lines += [f"- tenant {name}" for name in sorted(set(old.tenants) - set(new.tenants))]
    for name in sorted(set(old.tenants) & set(new.tenants)):
        before, after = old.tenants[name], new.tenants[name]
        lines += [f"+ {name}/{user}" for user in sorted(set(after.users) - set(before.users))]
        lines += [f"- {name}/{user}" for user in sorted(set(before.users) - set(after.users))]
        for user in sorted(set(before.users) & set(after.users)):
            was = before.effective_roles(set(before.users[user].roles))
            now = after.effective_roles(set(after.users[user].roles))
            if was != now:
                lines.append(f"~ {name}/{user}: roles {', '.join(was)} -> {', '.join(now)}")
        if before.memory != after.memory:
            lines.append(f"~ {name}: memory {before.memory} -> {after.memory}")
    return lines


def _read(path: Path, as_json: bool = False) -> Directory:
    """The tenants file, or exit: 2 when it cannot be read, 1 listing every problem when it can but is wrong."""
    try:
        return load_directory(path)
    except DirectoryError as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        if as_json:
            print_json({"ok": False, "file": str(path), "problems": [
                {"line": p.line, "where": p.where, "message": p.message} for p in exc.problems]})
        raise typer.Exit(USAGE if isinstance(exc, DirectoryUnreadable) else BAD) from None
