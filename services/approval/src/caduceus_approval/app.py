"""Wiring: the bus subscribers, the Temporal link and its worker, the desk and the web UI, built the same way
by `__main__` and the tests. Every subscriber is in the table in `_subscribe`."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx
from faststream.nats import NatsBroker, NatsMessage

from caduceus_approval.activities import ApprovalActivities
from caduceus_approval.calls import RecentCalls
from caduceus_approval.desk import ApprovalDesk
from caduceus_approval.directory import TenantDirectory
from caduceus_approval.domain import DESK_ISSUER, view_of
from caduceus_approval.handlers import (
    Approvals,
    on_approval_answered,
    on_tool_decided,
    on_tool_requested,
    on_turn_requested,
)
from caduceus_approval.inbox import Inbox
from caduceus_approval.settings import ApprovalSettings
from caduceus_approval.temporal_link import TemporalLink
from caduceus_approval.web.oidc_client import OidcClient
from caduceus_approval.web.routes import UiContext, build_app
from caduceus_approval.web.sessions import CookieJar, load_or_create_secret
from caduceus_bus import EVENT_SUBSCRIBER, EventPublisher, ensure_event_stream, make_broker
from caduceus_contracts import (
    ApprovalEscalated,
    ApprovalReminded,
    ApprovalRequested,
    ApprovalResolved,
    ApprovalVoted,
    ContractError,
    ensure_signer,
    parse_event,
    subjects,
)
from caduceus_contracts import ReloadingKeyring as PolicyKeys  # the keys policy signs `approve` decisions with
from caduceus_oidc import OidcVerifier
from caduceus_web import HttpServer

SERVICE = "approval"
HEALTH_SUBJECT = f"caduceus.health.{SERVICE}"
_VIEW_EVENTS = (ApprovalRequested, ApprovalVoted, ApprovalEscalated, ApprovalReminded, ApprovalResolved)

log = logging.getLogger(__name__)


class ApprovalService:
    """A built approval service; `start()` connects to the bus, serves the UI and begins reaching for Temporal."""

    def __init__(self, settings: ApprovalSettings) -> None:
        self.settings = settings
        self.broker: NatsBroker = make_broker(settings, SERVICE)
        self.publisher = EventPublisher(self.broker, settings, SERVICE)
        signer = ensure_signer(settings.keys_dir, SERVICE)
        desk_signer = ensure_signer(settings.keys_dir, DESK_ISSUER)
        self.inbox = Inbox()
        self.calls = RecentCalls(settings.keys_dir)
        self.directory = TenantDirectory(settings.tenants_file)
        self.temporal = TemporalLink(settings, ApprovalActivities(self.publisher.publish, signer,
                                                                  settings.decision_ttl_s),
                                     on_state=lambda state: self.inbox.apply(view_of(state)))
        self.approvals = Approvals(keys=PolicyKeys(settings.keys_dir), signer=signer, temporal=self.temporal,
                                   calls=self.calls, directory=self.directory,
                                   desk_key=desk_signer.public_pem().decode(), window_s=settings.approval_window_s,
                                   decision_ttl_s=settings.decision_ttl_s, request_wait_s=settings.request_wait_s)
        self.desk = ApprovalDesk(self.inbox, self.temporal, desk_signer, self.publisher.publish)
        self.http = httpx.AsyncClient(timeout=5.0, follow_redirects=False)
        self.verifier = (OidcVerifier(settings.oidc_issuer_url, settings.oidc_audience or settings.oidc_client_id,
                                      client=self.http) if settings.oidc_issuer_url else None)
        self.ui = self._ui()
        self._temporal_task: asyncio.Task[None] | None = None
        self._subscribe()

    def _ui(self) -> HttpServer | None:
        settings = self.settings
        if settings.ui_url is None:
            return None
        oidc = None
        if self.verifier is not None:
            oidc = OidcClient(settings.oidc_issuer_url or "", settings.oidc_client_id, settings.oidc_client_secret,
                              f"{settings.ui_url}/auth/callback", settings.oidc_scopes, self.verifier, self.http)
        cookies = CookieJar(load_or_create_secret(settings.ui_secret_file), settings.ui_session_ttl_s)
        context = UiContext(inbox=self.inbox, desk=self.desk, directory=self.directory, cookies=cookies, oidc=oidc,
                            api_verifier=self.verifier, publisher=self.publisher,
                            secure_cookies=settings.ui_url.startswith("https://"),
                            temporal_ui_url=settings.temporal_ui_url, temporal_namespace=settings.temporal_namespace)
        return HttpServer(build_app(context), settings.ui_host, settings.ui_port, what="the approvals UI",
                          port_setting="CADUCEUS_UI_PORT")

    def _subscribe(self) -> None:
        broker, publisher, approvals, calls, inbox = self.broker, self.publisher, self.approvals, self.calls, self.inbox
        temporal, desk, verifier, directory = self.temporal, self.desk, self.verifier, self.directory

        # Several at once: opening one approval may wait a moment for its request to arrive.
        @broker.subscriber(subjects.TOOL_DECIDED_ALL, queue=SERVICE, max_workers=16, **EVENT_SUBSCRIBER)
        async def tool_decided(msg: NatsMessage) -> None:
            await on_tool_decided(msg.raw_message.subject, msg.body, publisher, approvals)

        # Every replica remembers every request and turn: the decision may reach any of them.
        @broker.subscriber(subjects.TOOL_REQUESTED_ALL, **EVENT_SUBSCRIBER)
        async def tool_requested(msg: NatsMessage) -> None:
            await on_tool_requested(msg.raw_message.subject, msg.body, calls)

        @broker.subscriber(subjects.TURN_REQUESTED_ALL, **EVENT_SUBSCRIBER)
        async def turn_requested(msg: NatsMessage) -> None:
            await on_turn_requested(msg.raw_message.subject, msg.body, calls)

        # Every replica's inbox follows every approval, whichever replica's worker runs it.
        @broker.subscriber(subjects.APPROVAL_ALL, **EVENT_SUBSCRIBER)
        async def approval_event(msg: NatsMessage) -> None:
            try:
                event = parse_event(msg.body, subject=msg.raw_message.subject)
            except ContractError:
                return  # audit records malformed events; the inbox only reads good ones
            if isinstance(event, _VIEW_EVENTS):
                inbox.apply(event.approval)

        @broker.subscriber(subjects.APPROVAL_ANSWERED_ALL, queue=SERVICE, max_workers=8, **EVENT_SUBSCRIBER)
        async def approval_answered(msg: NatsMessage) -> None:
            if verifier is None:
                await publisher.refuse(msg.raw_message.subject, msg.body,
                                       "approval answers from chat need CADUCEUS_OIDC_ISSUER_URL to verify people")
                return
            await on_approval_answered(msg.raw_message.subject, msg.body, publisher, verifier, directory, desk)

        @broker.subscriber(HEALTH_SUBJECT)
        async def health(msg: NatsMessage) -> bytes:
            if temporal.connected.is_set():
                return b"ok"
            return f"waiting for Temporal at {temporal.address}".encode()

    async def start(self) -> None:
        await self.broker.connect()
        await ensure_event_stream(self.broker, self.settings)
        await self.broker.start()
        if self.ui is not None:
            await self.ui.start()
            log.info("approvals UI at %s", self.settings.ui_url)
        self._temporal_task = asyncio.create_task(self.temporal.run(), name="approval-temporal-link")

    async def stop(self) -> None:
        if self._temporal_task is not None:
            self._temporal_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._temporal_task
        if self.ui is not None:
            await self.ui.stop()
        await self.broker.stop()
        await self.http.aclose()


def build(settings: ApprovalSettings | None = None) -> ApprovalService:
    """The service from settings (the environment by default). Raises OSError when the keys dir is unusable."""
    return ApprovalService(settings or ApprovalSettings())
