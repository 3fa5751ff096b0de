"""Wiring: settings in, a startable identity service out. `python -m caduceus_identity` and the tests both use it.

Every handler is in one table here: chat messages to admission, the health check. The tenants file
is read again whenever it changes (`caduceus tenants apply`), so no restart is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta

from faststream.nats import NatsBroker, NatsMessage

from caduceus_bus import EventPublisher, ensure_event_stream, make_broker
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
from caduceus_identity.handlers import Admission, admit_chat_message
from caduceus_identity.settings import IdentitySettings

log = logging.getLogger(__name__)

SERVICE = "identity"
HEALTH_SUBJECT = f"caduceus.health.{SERVICE}"


class ConfigurationError(RuntimeError):
    """Identity cannot start as configured; the message says which setting to change."""


@dataclass
class IdentityService:
    """The running parts of identity: the bus subscribers, the issuers it trusts, its store and the dev issuer."""

    settings: IdentitySettings
    broker: NatsBroker
    admission: Admission
    issuers: IssuerRegistry
    store: IdentityStore
    dev_issuer: DevIssuerServer | None
    _relay: asyncio.Task | None = None

    @property
    def dev_issuer_url(self) -> str | None:
        return self.dev_issuer.issuer.issuer_url if self.dev_issuer else None

    async def start(self) -> None:
        """Serve the dev issuer first (the verifier fetches its keys), then connect and subscribe."""
        if self.dev_issuer is not None:
            await self.dev_issuer.start()
        try:
            await self.broker.connect()
            await ensure_event_stream(self.broker, self.settings)
            await self.broker.start()
        except BaseException:
            await self.stop()
            raise
        self._relay = asyncio.create_task(self.relay_changes(), name="identity-changes-relay")
        log.info("identity is ready: trusting tokens from %s", ", ".join(self.issuers.trusted) or "no issuer")

    async def relay_changes(self, interval_s: float = 1.0) -> None:
        """Publish the outbox of identity.db (changes made by the admin CLI or by identity) as audited events."""
        publisher = self.admission.publisher
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

    async def stop(self) -> None:
        if self._relay is not None:
            self._relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relay
        await self.broker.stop()
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
    store = IdentityStore(settings.identity_db)
    broker = make_broker(settings, SERVICE)
    admission = Admission(
        publisher=EventPublisher(broker, settings, SERVICE),
        gatekeeper=Gatekeeper(issuers, store, directory, utcnow),
        directory=directory,
        signer=ensure_signer(settings.keys_dir, SERVICE),
        grant_ttl=timedelta(seconds=settings.grant_ttl_s),
    )

    # no_reply: a JetStream publish carries an ack inbox, which must get the stream's ack, not ours.
    @broker.subscriber(subjects.CHAT_IN_ALL, queue=SERVICE, no_reply=True)
    async def on_chat_message(msg: NatsMessage) -> None:
        try:
            await admit_chat_message(msg.raw_message.subject, msg.body, admission)
        except Exception:
            log.exception("identity failed on a message on %s", msg.raw_message.subject)

    @broker.subscriber(HEALTH_SUBJECT)
    async def on_health(msg: NatsMessage) -> bytes:
        return b"ok"

    return IdentityService(settings, broker, admission, issuers, store, dev_issuer)
