"""Wiring: the relay, the conversation store and the web chat around the route table in handlers.py, built the
same way by `__main__` and the tests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import httpx
from prometheus_client import Counter

from caduceus_bus import BusService, ConfigurationError, EventConnection
from caduceus_directory import DirectoryError, DirectorySource
from caduceus_gateway.handlers import ROUTES
from caduceus_gateway.integrations import Integration, configured_integrations
from caduceus_gateway.relay import GatewayStopping, Relay, Speaker, TurnTimedOut, TurnUpdate
from caduceus_gateway.settings import GatewaySettings
from caduceus_gateway.slack import SlackConfigError, SlackGateway, load_slack_config
from caduceus_gateway.store import ConversationStore
from caduceus_gateway.web.routes import WebContext, build_app
from caduceus_gateway.web.sessions import CookieJar, SignedIn, load_or_create_secret
from caduceus_oidc import OidcClient, OidcVerifier, Refused, VerifiedIdentity
from caduceus_web import HttpServer

log = logging.getLogger(__name__)
TURNS = Counter("caduceus_gateway_turns_total", "Turns the gateway relayed for people, by how they ended "
                "(reply, refused, error, no-reply)", ["outcome"])


class GatewayService(BusService):
    """Chat ingress on the bus: the relay integrations talk through, and the web chat."""

    table = ROUTES

    def __init__(self, settings: GatewaySettings, integrations: Sequence[Integration] = ()) -> None:
        super().__init__(settings)
        self.settings = settings
        self.integrations = list(integrations)
        self.relay = Relay(self)
        self.store = ConversationStore(settings.gateway_db_url or settings.gateway_db)
        self._directory = DirectorySource(settings.tenants_file)
        self.http = httpx.AsyncClient(timeout=5.0, follow_redirects=False)
        self._turns: set[asyncio.Task[None]] = set()
        self.taking_turns = True
        # Set once the turns in progress at SIGTERM are answered (or cut off): the web chat's event streams end.
        self.streams_end = asyncio.Event()
        for outcome in ("reply", "refused", "error", "no-reply"):
            TURNS.labels(outcome)  # shown (as 0) before the first turn
        self.web = self._web()
        self.slack: SlackGateway | None = None

    def workspaces(self, tenant: str) -> tuple[str, ...]:
        """The tenant's workspaces, or () for a tenant the tenants file does not have (or cannot be read)."""
        try:
            known = self._directory().tenants.get(tenant)
        except DirectoryError as exc:
            log.warning("cannot read the tenants file: %s", exc)
            return ()
        return tuple(known.workspaces) if known is not None else ()

    def member(self, identity: VerifiedIdentity) -> str:
        """The directory's name for a signed-in person (listed, or by a group that maps to a role); Refused if none."""
        try:
            return self._directory().member(identity).name
        except DirectoryError as exc:
            raise Refused(f"the tenants file cannot be read: {exc}", "try again shortly") from None

    async def speak(self, person: SignedIn, conversation_id: str, workspace: str, text: str) -> None:
        """A signed-in person's message: recorded, sent, and its turn recorded as it happens (in the background,
        so the conversation is complete even when the person closes the page). GatewayStopping once it stops."""
        if not self.taking_turns:
            raise GatewayStopping("the chat is restarting: send your message again in a moment")
        conversation = self.store.get(conversation_id, person.tenant, person.user)
        if conversation is not None and conversation.title == "New conversation":
            self.store.retitle(conversation_id, text)
        self.store.add(conversation_id, "person", {"text": text})
        speaker = Speaker(tenant=person.tenant, token=person.token, channel=person.channel)
        task = asyncio.create_task(self._record_turn(speaker, conversation_id, workspace, text),
                                   name=f"turn-{conversation_id}")
        self._turns.add(task)
        task.add_done_callback(self._turns.discard)

    async def _record_turn(self, speaker: Speaker, conversation_id: str, workspace: str, text: str) -> None:
        try:
            async for update in self.relay.turn(speaker, conversation_id, text, workspace=workspace,
                                                timeout_s=self.settings.turn_timeout_s):
                self.store.add(conversation_id, update.kind, update.as_json())
                if update.kind == "reply":
                    TURNS.labels("reply" if update.status == "ok" else update.status).inc()
        except TurnTimedOut as exc:
            TURNS.labels("no-reply").inc()
            self._failed(speaker.tenant, conversation_id, str(exc))
        except asyncio.CancelledError:  # the gateway stopped before the reply came
            TURNS.labels("no-reply").inc()
            self._failed(speaker.tenant, conversation_id, "the chat restarted before this message's reply came; "
                                                          "ask again to see where things stand")
            raise
        except Exception as exc:
            TURNS.labels("error").inc()
            log.exception("the turn in conversation %s could not be relayed", conversation_id)
            self._failed(speaker.tenant, conversation_id, f"the gateway could not send this message "
                                                          f"({type(exc).__name__}); try again shortly")

    def _failed(self, tenant: str, conversation_id: str, why: str) -> None:
        """Keep and show why a turn got no reply: the person is never left waiting in silence."""
        self.store.add(conversation_id, "error", {"text": why})
        self.relay.tell(tenant, TurnUpdate("error", conversation_id, text=why))

    def _web(self) -> HttpServer | None:
        settings = self.settings
        if settings.web_url is None:
            return None
        oidc = None
        if settings.oidc_issuer_url:
            verifier = OidcVerifier(settings.oidc_issuer_url, settings.oidc_audience or settings.oidc_client_id,
                                    client=self.http)
            oidc = OidcClient(settings.oidc_issuer_url, settings.oidc_client_id, settings.oidc_client_secret,
                              f"{settings.web_url}/auth/callback", settings.oidc_scopes, verifier, self.http)
        context = WebContext(relay=self.relay, store=self.store,
                             cookies=CookieJar(load_or_create_secret(settings.web_secret_file),
                                               settings.web_session_ttl_s),
                             oidc=oidc, workspaces=self.workspaces, member=self.member, start_turn=self.speak,
                             audit_refusal=lambda where, reason: self.refuse(where, b"", reason),
                             approvals_url=settings.approvals_url, streams_end=self.streams_end,
                             secure_cookies=settings.web_url.startswith("https://"))
        return HttpServer(build_app(context), settings.web_host, settings.web_port, what="the web chat",
                          port_setting="CADUCEUS_WEB_PORT", shared=settings.shared_ports)

    async def prepare(self, connection: EventConnection) -> Relay:
        await self._start_slack(connection)
        if self.web is not None:
            await self.web.start()
            log.info("web chat at %s", self.settings.web_url)
        for integration in self.integrations:
            await integration.start(self.relay)
            log.info("%s integration started", integration.name)
        return self.relay

    async def _start_slack(self, connection: EventConnection) -> None:
        """Serve the workspaces of slack.yaml, if there is one (a broken one stops the gateway, saying why)."""
        if not self.settings.slack_config.exists():
            log.info("Slack is off: no %s", self.settings.slack_config)
            return
        try:
            config = load_slack_config(self.settings.slack_config)
        except SlackConfigError as exc:
            raise ConfigurationError(f"Slack cannot start: {exc}") from None
        self.slack = SlackGateway(config, connection,
                                  directory=self._directory, api_url=self.settings.slack_api_url,
                                  reply_timeout_s=self.settings.turn_timeout_s)
        if self.web is not None:  # the Events API and interactivity URL: <web chat URL>/slack/events
            self.web.app.router.routes.extend(self.slack.routes())
        self.integrations.append(self.slack)  # started with the relay and stopped like any integration

    async def quiesce(self) -> None:
        """On SIGTERM, with the bus still up: no new turn is taken (the web chat stops listening, and a message
        sent on a connection still open is answered 503; Slack's deliveries are left for Slack to send again),
        the turns in progress get `gateway_drain_s` for their replies to reach their people, those still
        unanswered then are told so, the event streams end, and the web chat stops."""
        self.taking_turns = False
        if self.web is not None:
            self.web.stop_listening()
        drain_s = self.settings.gateway_drain_s
        # drain is optional: an integration written before it existed is stopped after the others drained.
        draining = [i.drain(drain_s) for i in self.integrations if hasattr(i, "drain")]
        await asyncio.gather(self._finish_turns(drain_s), *draining)
        self.streams_end.set()
        if self.web is not None:
            await self.web.stop()

    async def _finish_turns(self, within_s: float) -> None:
        """Wait up to `within_s` for the web chat's turns in progress; cut off those still waiting then."""
        if not self._turns:
            return
        _, waiting = await asyncio.wait(tuple(self._turns), timeout=within_s)
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)

    async def cleanup(self) -> None:
        for task in tuple(self._turns):
            task.cancel()
        for integration in reversed(self.integrations):
            try:
                await integration.stop()
            except Exception:
                log.exception("the %s integration did not stop cleanly", integration.name)
        if self.web is not None:
            await self.web.stop()
        await self.http.aclose()
        self.store.close()


def build(settings: GatewaySettings | None = None) -> GatewayService:
    """The service from settings (the environment by default)."""
    settings = settings or GatewaySettings()
    return GatewayService(settings, configured_integrations(settings))
