"""Wiring: the Temporal link and its worker, the desk and the web UI around the route table in handlers.py,
built the same way by `__main__` and the tests."""

from __future__ import annotations

import asyncio
import logging

import httpx
from prometheus_client import Gauge

from caduceus_approval.activities import ApprovalActivities
from caduceus_approval.calls import RecentCalls
from caduceus_approval.desk import ApprovalDesk
from caduceus_approval.directory import TenantDirectory
from caduceus_approval.domain import DESK_ISSUER, view_of
from caduceus_approval.handlers import RESOLVED, ROUTES, ApprovalDeps, Approvals
from caduceus_approval.inbox import Inbox
from caduceus_approval.settings import ApprovalSettings
from caduceus_approval.temporal_link import TemporalLink
from caduceus_approval.usage import AuditUsage
from caduceus_approval.web.routes import UiContext, build_app
from caduceus_approval.web.sessions import CookieJar, load_or_create_secret
from caduceus_bus import BusService, EventConnection
from caduceus_contracts import ReloadingKeyring, ensure_signer
from caduceus_oidc import OidcClient, OidcVerifier
from caduceus_web import HttpServer

SERVICE = ROUTES.role
HEALTH_SUBJECT = ROUTES.health_subject
APPROVALS_OPEN = Gauge("caduceus_approvals_open", "Approvals waiting for people (this replica's inbox)")

log = logging.getLogger(__name__)


class ApprovalService(BusService):
    """Approvals on the bus: opens Temporal workflows for `approve` decisions, serves the desk and the UI."""

    table = ROUTES

    def __init__(self, settings: ApprovalSettings) -> None:
        super().__init__(settings)
        self.settings = settings
        signer = ensure_signer(settings.keys_dir, SERVICE)
        desk_signer = ensure_signer(settings.keys_dir, DESK_ISSUER)
        self.inbox = Inbox()
        APPROVALS_OPEN.set_function(self.inbox.open_count)
        for status in ("approved", "denied", "expired"):
            RESOLVED.labels(status)  # shown (as 0) before the first approval closes
        self.calls = RecentCalls(settings.keys_dir)
        self.directory = TenantDirectory(settings.tenants_file)
        self.temporal = TemporalLink(settings, ApprovalActivities(self.publish, signer, settings.decision_ttl_s),
                                     on_state=lambda state: self.inbox.apply(view_of(state)))
        self.approvals = Approvals(keys=ReloadingKeyring(settings.keys_dir), signer=signer, temporal=self.temporal,
                                   calls=self.calls, directory=self.directory,
                                   desk_key=desk_signer.public_pem().decode(), window_s=settings.approval_window_s,
                                   decision_ttl_s=settings.decision_ttl_s, request_wait_s=settings.request_wait_s)
        self.desk = ApprovalDesk(self.inbox, self.temporal, desk_signer, self.publish)
        self.usage = AuditUsage(self._request, settings.usage_timeout_s)
        self.http = httpx.AsyncClient(timeout=5.0, follow_redirects=False)
        # Set on SIGTERM: the UI's live inbox streams end rather than hold the stop.
        self.streams_end = asyncio.Event()
        self.verifier = (OidcVerifier(settings.oidc_issuer_url, settings.oidc_audience or settings.oidc_client_id,
                                      client=self.http) if settings.oidc_issuer_url else None)
        self.ui = self._ui()

    @property
    def publisher(self) -> "ApprovalService":
        return self

    async def _request(self, subject: str, data: bytes, timeout_s: float) -> bytes:
        """One core-NATS request and its answer's body (the usage page asking audit)."""
        if self.connection is None:
            raise ConnectionError("not connected to the bus")
        return (await self.connection.nc.request(subject, data, timeout=timeout_s)).data

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
                            temporal_ui_url=settings.temporal_ui_url, temporal_namespace=settings.temporal_namespace,
                            usage=self.usage, streams_end=self.streams_end)
        return HttpServer(build_app(context), settings.ui_host, settings.ui_port, what="the approvals UI",
                          port_setting="CADUCEUS_UI_PORT", shared=settings.shared_ports, grace_s=settings.ui_drain_s)

    async def prepare(self, connection: EventConnection) -> ApprovalDeps:
        """Serve the UI, begin reaching for Temporal (health says so until it is there), hand the routes their deps."""
        if self.ui is not None:
            await self.ui.start()
            log.info("approvals UI at %s", self.settings.ui_url)
        self.background(self.temporal.run(), "approval-temporal-link")
        log.info("approval started; Temporal at %s, task queue %s, UI %s", self.settings.temporal_address,
                 self.settings.approval_task_queue, self.settings.ui_url or "disabled")
        return ApprovalDeps(publisher=self, approvals=self.approvals, calls=self.calls, inbox=self.inbox,
                            desk=self.desk, directory=self.directory, verifier=self.verifier)

    def health(self) -> str:
        if self.temporal.connected.is_set():
            return "ok"
        return f"waiting for Temporal at {self.temporal.address}"

    async def quiesce(self) -> None:
        """On SIGTERM, with the bus and this process's Temporal worker still running: the UI takes no new request,
        its live inbox streams end, and answers in progress get `ui_drain_s` to reach their workflow and be
        acknowledged to their approver."""
        self.streams_end.set()
        if self.ui is not None:
            await self.ui.stop()

    async def cleanup(self) -> None:
        if self.ui is not None:
            await self.ui.stop()
        await self.http.aclose()


def build(settings: ApprovalSettings | None = None) -> ApprovalService:
    """The service from settings (the environment by default). Raises OSError when the keys dir is unusable."""
    return ApprovalService(settings or ApprovalSettings())
