"""The relay every chat integration of the gateway goes through (the web chat, Slack): a person's message into a
conversation, and what the turn does back out, as it happens.

`Relay.turn()` publishes one `ChatMessageIn` (identity decides who the speaker is; the gateway never does) and
yields the turn's updates: each tool call with its decisions and outcome, the notices the person is told
(waiting for approval, its outcome) and finally the reply. `Relay.listen()` follows a conversation without sending
(a browser's event stream). Every replica gets every reply and notice, so a person may send through one replica and
listen on another.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from caduceus_bus import Publisher
from caduceus_contracts import (
    ChatMessageIn,
    ChatNotice,
    ChatReply,
    Event,
    ToolCallCompleted,
    ToolCallDecided,
    ToolCallRequested,
    subjects,
)
from caduceus_redaction import redact_value

UpdateKind = Literal["call", "decision", "outcome", "notice", "reply", "error"]


@dataclass(frozen=True)
class Speaker:
    """Who a message is from, as identity will check it.

    `token` is the person's OIDC token (the web chat), or the integration's service-account key with the
    platform user who wrote (`platform`, `platform_user`, a verified `platform_email`). `channel` is where it
    was said, and part of the memory scope: `web:<user>`, `dm:slack:<team>:<user>`, `channel:slack:<team>:<id>`
    (a shared channel keeps a memory of its own, so what is said there never reaches a DM).
    """

    tenant: str
    token: str = field(repr=False)
    channel: str
    platform: str | None = None
    platform_user: str | None = None
    platform_email: str | None = None


@dataclass(frozen=True)
class TurnUpdate:
    """One thing a person sees happen in their conversation."""

    kind: UpdateKind
    session_id: str
    text: str = ""  # the reply, the notice, a decision's reason, a call's result
    status: str = ""  # reply: ok/refused/error; decision: allow/deny/approve; outcome: ok/error/denied/refused
    call_id: str | None = None
    tool: str | None = None
    args: dict[str, Any] | None = None
    message_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value not in (None, "")}


def update_of(event: Event) -> TurnUpdate | None:
    """What a person is shown of a bus event (secrets in arguments and results redacted), or None."""
    if isinstance(event, ChatReply):
        return TurnUpdate("reply", event.session_id, text=event.text, status=event.status, message_id=event.message_id)
    if isinstance(event, ChatNotice):
        return TurnUpdate("notice", event.session_id, text=event.text, call_id=event.call_id)
    if isinstance(event, ToolCallRequested):
        return TurnUpdate("call", event.session_id, call_id=event.call_id, tool=event.tool,
                          args=redact_value(event.args))
    if isinstance(event, ToolCallDecided):
        decision = event.decision.decision
        return TurnUpdate("decision", decision.session_id, text=decision.reason, status=decision.verdict,
                          call_id=event.call_id, tool=decision.tool)
    if isinstance(event, ToolCallCompleted):
        shown = redact_value(event.result or event.reason)
        return TurnUpdate("outcome", event.session_id, text=shown if isinstance(shown, str) else str(shown),
                          status=event.status, call_id=event.call_id, tool=event.tool)
    return None


class TurnTimedOut(TimeoutError):
    """No reply came in time; the message says what to check."""


class GatewayStopping(RuntimeError):
    """The gateway is stopping and takes no new turn; the message tells the person to send it again shortly."""


class Relay:
    """Sends people's messages and hands each conversation's updates to whoever listens to it."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self._listeners: dict[tuple[str, str], set[asyncio.Queue[TurnUpdate]]] = defaultdict(set)

    def deliver(self, event: Event) -> None:
        """Hand a bus event to the listeners of its conversation (the route handlers call this)."""
        update = update_of(event)
        if update is not None:
            self.tell(event.tenant, update)

    def tell(self, tenant: str, update: TurnUpdate) -> None:
        """Hand the conversation's listeners an update of the gateway's own (a turn it could not relay)."""
        for queue in tuple(self._listeners.get((tenant, update.session_id), ())):
            queue.put_nowait(update)

    @contextlib.contextmanager
    def listen(self, tenant: str, session_id: str) -> Iterator[asyncio.Queue[TurnUpdate]]:
        """A queue of the conversation's updates while the block runs."""
        key = (tenant, session_id)
        queue: asyncio.Queue[TurnUpdate] = asyncio.Queue()
        self._listeners[key].add(queue)
        try:
            yield queue
        finally:
            self._listeners[key].discard(queue)
            if not self._listeners[key]:
                del self._listeners[key]

    async def send(self, speaker: Speaker, session_id: str, text: str, workspace: str = "default") -> ChatMessageIn:
        """Publish one message into the conversation; identity admits it (a turn starts) or refuses it (a reply
        says why)."""
        message = ChatMessageIn(tenant=speaker.tenant, session_id=session_id, workspace=workspace,
                                channel=speaker.channel, token=speaker.token, text=text, platform=speaker.platform,
                                platform_user=speaker.platform_user, platform_email=speaker.platform_email)
        await self.publisher.publish(subjects.chat_in(speaker.tenant), message)
        return message

    async def turn(self, speaker: Speaker, session_id: str, text: str, *, workspace: str = "default",
                   timeout_s: float = 300.0) -> AsyncIterator[TurnUpdate]:
        """Send one message and yield its turn's updates, ending with the reply. TurnTimedOut when none comes."""
        with self.listen(speaker.tenant, session_id) as updates:
            message = await self.send(speaker, session_id, text, workspace)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while True:
                try:
                    update = await asyncio.wait_for(updates.get(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    raise TurnTimedOut(f"no reply within {timeout_s:g} s in conversation {session_id}; the "
                                       "services may be down (see `caduceus status`)") from None
                if update.kind == "reply" and update.message_id != message.message_id:
                    continue  # the reply to another message of the same conversation
                yield update
                if update.kind == "reply":
                    return
