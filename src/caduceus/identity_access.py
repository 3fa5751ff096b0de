"""What identity commands share: where the tenants file and identity's store are, which issuer to trust,
and turning a token (or a service-account key) into the person or integration it names."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from caduceus.scripting import BAD, USAGE
from caduceus_directory import DirectoryError, DirectorySource, DirectoryUnreadable, Member
from caduceus_embedded import StateLayout, default_state_dir, read_stack_info
from caduceus_identity import (
    DeploymentIssuer,
    IdentitySettings,
    IdentityStore,
    IssuerRegistry,
    ServiceAccount,
    looks_like_api_key,
)
from caduceus_oidc import Refused, VerifiedIdentity
from caduceus_schema import SchemaTooNew

err = Console(stderr=True, soft_wrap=True, highlight=False)

STATE_DIR_HELP = "State dir of the stack (default: $CADUCEUS_STATE_DIR or the user data dir)."
TENANTS_FILE_HELP = "The tenants file to use (default: tenants.yaml in the state dir)."
ISSUER_HELP = ("The deployment-wide OIDC issuer to trust (default: the running stack's dev issuer, else "
               "$CADUCEUS_OIDC_ISSUER_URL).")


@dataclass
class IdentityAccess:
    state_dir: Path
    tenants_file: Path
    issuer_url: str | None

    def directory(self) -> DirectorySource:
        try:
            return DirectorySource(self.tenants_file)
        except DirectoryError as exc:
            err.print(f"[red]{escape(str(exc))}[/red]")
            raise typer.Exit(USAGE if isinstance(exc, DirectoryUnreadable) else BAD) from None

    def store(self) -> IdentityStore:
        try:
            settings = IdentitySettings(state_dir=self.state_dir)
            # The stack's database when it keeps its stores in PostgreSQL, as its identity replicas do.
            return IdentityStore(settings.identity_db_url or StateLayout(self.state_dir).database_url
                                 or settings.identity_db)
        except SchemaTooNew as exc:
            err.print(f"[red]{escape(str(exc))}[/red]")
            raise typer.Exit(2) from None

    async def resolve(self, token: str, tenant: str | None) -> tuple[VerifiedIdentity, Member]:
        """What an OIDC token proves and the person it names in its tenant; Refused says why not."""
        directory = self.directory()
        deployment = DeploymentIssuer(self.issuer_url) if self.issuer_url else None
        registry = IssuerRegistry(directory, deployment)
        try:
            identity = await registry.verify(token, tenant)
            if tenant is not None and identity.tenant != tenant:
                raise Refused(f"token is for tenant {identity.tenant!r}, not {tenant!r}",
                              f"ask about tenant {identity.tenant!r}, or get a token for {tenant!r}")
            return identity, directory().member(identity)
        finally:
            await registry.close()

    def service_account(self, key: str) -> ServiceAccount | None:
        store = self.store()
        try:
            return store.authenticate(key)
        finally:
            store.close()


def access(state_dir: Path | None, tenants_file: Path | None = None, issuer_url: str | None = None) -> IdentityAccess:
    """Resolve the state dir, the tenants file and the issuer the way the running stack does."""
    state = (state_dir or default_state_dir()).expanduser()
    if issuer_url is None:
        stack = read_stack_info(state)
        issuer_url = stack.dev_issuer_url if stack is not None else IdentitySettings(state_dir=state).trusted_issuer_url
    return IdentityAccess(state, tenants_file or state / "tenants.yaml", issuer_url)


def resolve_admin(where: IdentityAccess, token: str, tenant: str) -> Member:
    """The tenant admin a token names, or exit 1 saying why not."""
    if looks_like_api_key(token):
        err.print("[red]a service-account key cannot approve anything[/red]: use a tenant admin's OIDC token")
        raise typer.Exit(1)
    try:
        _, member = asyncio.run(where.resolve(token, tenant))
    except Refused as refused:
        err.print(f"[red]refused:[/red] {escape(refused.reply_text)}")
        raise typer.Exit(1) from None
    if not member.is_admin:
        err.print(f"[red]{escape(member.name)} is not an owner or admin of tenant {tenant!r}[/red] "
                  f"(roles: {', '.join(member.roles) or 'none'})")
        raise typer.Exit(1)
    return member
