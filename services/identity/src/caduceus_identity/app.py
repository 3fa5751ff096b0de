"""Wiring: settings in, a startable identity service out. `python -m caduceus_identity` and the tests both use it.

Its route table is in handlers.py. The tenants file is read again whenever it changes (`caduceus tenants
apply`), so no restart is needed.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from caduceus_bus import BusService, ConfigurationError, EventConnection
from caduceus_contracts import ensure_signer, subjects, utcnow
from caduceus_directory import DirectorySource
from caduceus_identity.adapters.dev_issuer import (
    DevIssuer,
    DevIssuerServer,
    load_or_create_key,
)
from caduceus_identity.adapters.issuers import IssuerRegistry
from caduceus_identity.adapters.store import IdentityStore
from caduceus_identity.gatekeeper import Gatekeeper
from caduceus_identity.handlers import ROUTES, Admission
from caduceus_identity.settings import IdentitySettings

log = logging.getLogger(__name__)

SERVICE = ROUTES.role
HEALTH_SUBJECT = ROUTES.health_subject


class IdentityService(BusService):
    """Identity on the bus: admits chat messages, relays identity changes; serves the dev issuer if enabled."""

    table = ROUTES

    def __init__(self, settings: IdentitySettings, directory: DirectorySource, issuers: IssuerRegistry,
                 store: IdentityStore, dev_issuer: DevIssuerServer | None) -> None:
        super().__init__(settings)
        self.settings = settings
        self.directory = directory
        self.issuers = issuers
        self.store = store
        self.dev_issuer = dev_issuer
        self.admission: Admission | None = None

    @property
    def dev_issuer_url(self) -> str | None:
        return self.dev_issuer.issuer.issuer_url if self.dev_issuer else None

    async def start(self) -> None:
        """Serve the dev issuer first (the verifier fetches its keys), then join the bus."""
        if self.dev_issuer is not None:
            await self.dev_issuer.start()
        await super().start()
        log.info("identity is ready: trusting tokens from %s", ", ".join(self.issuers.trusted) or "no issuer")

    async def prepare(self, connection: EventConnection) -> Admission:
        self.admission = Admission(
            publisher=connection,
            gatekeeper=Gatekeeper(self.issuers, self.store, self.directory, utcnow),
            directory=self.directory,
            signer=ensure_signer(self.settings.keys_dir, SERVICE),
            grant_ttl=timedelta(seconds=self.settings.grant_ttl_s),
            mcp_audience=self.settings.mcp_audience,
        )
        self.background(self.relay_changes(connection), "identity-changes-relay")
        return self.admission

    async def relay_changes(self, publisher: EventConnection, interval_s: float = 1.0) -> None:
        """Publish the outbox of identity.db (changes made by the admin CLI or by identity) as audited events."""
        while True:
            try:
                changes = await asyncio.to_thread(self.store.unpublished_changes)
                for change in changes:
                    await publisher.publish(subjects.identity_changed(change.tenant), change)
                if changes:
                    await asyncio.to_thread(self.store.mark_published, [c.event_id for c in changes])
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:
                # Unpublished changes stay in the outbox; the stream stores a retried one once (same event id).
                log.exception("could not publish identity changes; retrying")
            await asyncio.sleep(interval_s)

    async def cleanup(self) -> None:
        await self.issuers.close()
        self.store.close()
        if self.dev_issuer is not None:
            await self.dev_issuer.stop()


def bootstrap(settings: IdentitySettings) -> IdentityService:
    """Build identity from its settings: load tenants and keys, build the broker, register the handlers.

    Raises DirectoryError (tenants file), DevIssuerError (its key) or ConfigurationError, each saying what to fix.
    """
    directory = DirectorySource(settings.tenants_file)
    issuers = IssuerRegistry(directory, settings.deployment_issuer(), settings.verifier_timing())
    if not issuers.trusted:
        raise ConfigurationError(
            "identity trusts no token issuer: set CADUCEUS_OIDC_ISSUER_URL to your OIDC provider, "
            "list tenants' providers under `issuers:` in tenants.yaml, or enable the dev issuer with "
            "CADUCEUS_DEV_ISSUER_PORT"
        )
    dev_issuer = None
    if settings.dev_issuer_url is not None:
        issuer = DevIssuer(load_or_create_key(settings.dev_issuer_key_path), settings.dev_issuer_url,
                           settings.oidc_audience, directory)
        dev_issuer = DevIssuerServer(issuer, settings.dev_issuer_host, settings.dev_issuer_port)
    store = IdentityStore(settings.identity_db_url or settings.identity_db)
    return IdentityService(settings, directory, issuers, store, dev_issuer)
