"""Chat over the bus: one turn in, its reply (and, when watched, its tool calls) out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from nats.aio.msg import Msg

from caduceus_bus import BusSettings, EventConnection
from caduceus_contracts import (
    ChatMessageIn,
    ChatNotice,
    ChatReply,
    ContractError,
    Decision,
    ErrorEvent,
    Event,
    ToolCallCompleted,
    ToolCallDecided,
    ToolCallRequested,
    new_id,
    parse_event,
    subjects,
)

CONNECT_TIMEOUT_S = 10.0


class ChatTimeout(TimeoutError):
    """No reply arrived in time; the message says what to check."""


@dataclass
class ToolCallRecord:
    """One tool call of a turn, as the bus saw it."""

    call_id: str
    tool: str
    args: dict
    decisions: list[Decision] = field(default_factory=list)
    outcome: ToolCallCompleted | None = None

    @property
    def decision(self) -> Decision | None:
        return self.decisions[-1] if self.decisions else None


@dataclass
class TurnTranscript:
    tenant: str
    session_id: str
    message: ChatMessageIn
    reply: ChatReply | None = None
    calls: dict[str, ToolCallRecord] = field(default_factory=dict)
    errors: list[ErrorEvent] = field(default_factory=list)
    event_ids: set[str] = field(default_factory=set)
    # What the person was told during the turn, e.g. that a call waits for approval, and its outcome.
    notices: list[ChatNotice] = field(default_factory=list)

    def observe(self, event: Event) -> None:
        self.event_ids.add(event.event_id)
        if isinstance(event, ToolCallRequested):
            self.calls.setdefault(event.call_id, ToolCallRecord(event.call_id, event.tool, event.args))
        elif isinstance(event, ToolCallDecided) and event.call_id in self.calls:
            self.calls[event.call_id].decisions.append(event.decision.decision)
        elif isinstance(event, ToolCallCompleted) and event.call_id in self.calls:
            self.calls[event.call_id].outcome = event
        elif isinstance(event, ErrorEvent):
            self.errors.append(event)
        elif isinstance(event, ChatNotice):
            self.notices.append(event)


class ChatClient:
    """Talks to a running Caduceus over NATS."""

    def __init__(self, conn: EventConnection) -> None:
        self.conn = conn

    @classmethod
    async def connect(cls, bus: str | BusSettings, *, name: str = "caduceus-chat-client") -> "ChatClient":
        """Connect to the bus: a URL (a bus without authorization), or settings with the client's credential."""
        settings = bus if isinstance(bus, BusSettings) else BusSettings(nats_url=bus)
        try:
            # The connection retries a server that refuses forever (right for a service, which waits for the bus);
            # a client must give up and say so.
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                conn = await EventConnection.connect(settings, name=name, connect_timeout=3)
        except Exception as exc:
            hint = ("the bus refused the credential: use the client credential of the running stack "
                    "(keys/nats/client.creds in its state dir)" if "authorization" in str(exc).lower()
                    else "is the stack running? Start it with `caduceus up`")
            raise ConnectionError(f"cannot reach NATS at {settings.nats_url} ({str(exc) or type(exc).__name__}); "
                                  f"{hint}") from None
        return cls(conn)

    async def close(self) -> None:
        await self.conn.close()

    async def send(self, *, tenant: str, token: str, text: str, session_id: str | None = None,
                   workspace: str = "default", channel: str = "cli", timeout: float = 120.0,
                   watch: bool = False, platform: str | None = None, platform_user: str | None = None,
                   platform_email: str | None = None,
                   on_notice: Callable[[ChatNotice], None] | None = None) -> TurnTranscript:
        """Send one message and wait for its reply. Raises ChatTimeout when none comes in time.

        `token` is the person's OIDC token; a chat integration sends its service-account key instead,
        with the platform user who wrote the message (`platform`, `platform_user`, a verified `platform_email`).
        Notices for the conversation (waiting for approval, its outcome) are kept in the transcript and,
        with `on_notice`, handed over as they arrive.
        """
        session_id = session_id or f"s-{new_id()[:16]}"
        message = ChatMessageIn(tenant=tenant, session_id=session_id, workspace=workspace, channel=channel,
                                token=token, text=text, platform=platform, platform_user=platform_user,
                                platform_email=platform_email)
        transcript = TurnTranscript(tenant, session_id, message)
        transcript.event_ids.add(message.event_id)
        done: asyncio.Future[ChatReply] = asyncio.get_running_loop().create_future()
        session_calls: set[str] = set()

        async def on_reply(msg: Msg) -> None:
            try:
                reply = parse_event(msg.data, expect=ChatReply, subject=msg.subject)
            except ContractError:
                return
            if reply.message_id == message.message_id and not done.done():
                transcript.observe(reply)
                done.set_result(reply)

        async def on_event(msg: Msg) -> None:
            try:
                event = parse_event(msg.data, subject=msg.subject)
            except ContractError:
                return
            if isinstance(event, ToolCallRequested) and event.session_id == session_id:
                session_calls.add(event.call_id)
            if _session_of(event) == session_id or getattr(event, "call_id", None) in session_calls \
                    or isinstance(event, ErrorEvent):
                transcript.observe(event)

        async def on_chat_notice(msg: Msg) -> None:
            try:
                notice = parse_event(msg.data, expect=ChatNotice, subject=msg.subject)
            except ContractError:
                return
            transcript.observe(notice)
            if on_notice is not None:
                on_notice(notice)

        subscriptions = [await self.conn.subscribe(subjects.chat_reply(tenant, session_id), on_reply),
                         await self.conn.subscribe(subjects.chat_notice(tenant, session_id), on_chat_notice)]
        if watch:
            for pattern in (f"{subjects.PREFIX}.tool.*.{tenant}", f"{subjects.PREFIX}.tool.*.{tenant}.>",
                            f"{subjects.PREFIX}.turn.*.{tenant}", f"{subjects.PREFIX}.turn.*.{tenant}.>",
                            f"{subjects.PREFIX}.error.{tenant}.>"):
                subscriptions.append(await self.conn.subscribe(pattern, on_event))
        try:
            await self.conn.nc.flush()
            await self.conn.publish(subjects.chat_in(tenant), message)
            try:
                transcript.reply = await asyncio.wait_for(done, timeout)
            except TimeoutError:
                raise ChatTimeout(f"no reply within {timeout:g} s for session {session_id}; check that every "
                                  "service is up (`caduceus up` prints them) and see the logs in the state dir") from None
            await asyncio.sleep(0.2)  # let the turn's last outcome events arrive for the transcript
        finally:
            for sub in subscriptions:
                await sub.unsubscribe()
        return transcript


def _session_of(event: Event) -> str | None:
    if hasattr(event, "session_id"):
        return event.session_id
    grant = getattr(event, "grant", None)
    return grant.grant.session_id if grant is not None else None
