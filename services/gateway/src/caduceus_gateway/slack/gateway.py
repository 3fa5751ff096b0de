"""The Slack integration: Slack workspaces in, the bus out. It publishes `chat.in` and answers, never decides.

- A direct message or a mention starts a conversation (the message's thread) or continues one (a reply in
  the thread); the reply goes to the thread. The Slack user is a person only through identity's pairing:
  an unpaired user gets identity's instructions (to them alone in a channel), not an agent.
- The memory scope names the Slack channel (`channel:slack:<team>:<channel>`, a DM `dm:slack:<team>:<user>`),
  so a channel's context does not reach a direct message.
- Approvals of the workspace's tenant go to the approvers' direct messages (found by their email in
  tenants.yaml) or to the configured channel, as Block Kit with Approve and Deny. A press is sent to
  identity to vouch for the person, then counted (or refused) by the approval desk; the message is updated
  as the approval changes, and a press that did not count is explained to the one who pressed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from nats.aio.msg import Msg
from slack_bolt.adapter.socket_mode.websockets import AsyncSocketModeHandler
from slack_sdk.errors import SlackApiError
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from caduceus_bus import EventConnection
from caduceus_client import ChatClient
from caduceus_contracts import (
    ApprovalRefused,
    ApprovalReminded,
    ApprovalView,
    ApprovalVouchRequested,
    ChatNotice,
    ContractError,
    parse_event,
    subjects,
)
from caduceus_directory import Directory
from caduceus_gateway.slack.blocks import (
    APPROVE_ACTION,
    DENY_ACTION,
    approval_blocks,
    approval_text,
    escape,
    parse_button_value,
)
from caduceus_gateway.slack.config import SlackConfig, SlackWorkspace
from caduceus_gateway.slack.installation import SLACK_API_URL, Installation, team_of

log = logging.getLogger(__name__)

PLATFORM = "slack"
EVENTS_PATH = "/slack/events"
REFUSALS_AUDITED = 30  # per claimed workspace and minute: a flood of forged requests cannot flood the audit trail
_MENTION = re.compile(r"<@[A-Z0-9]+>")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def session_for(team: str, channel: str, thread_ts: str) -> str:
    """One Slack thread is one conversation."""
    return _UNSAFE.sub("-", f"slack-{team}-{channel}-{thread_ts}")[:128]


def memory_channel(team: str, channel: str, user: str, *, shared: bool) -> str:
    """The turn's channel, part of its memory scope: a shared Slack channel is `channel:slack:<team>:<channel>`
    (kept apart from each person's own memory), a DM is the person's own `dm:slack:<team>:<user>`."""
    return f"channel:slack:{team}:{channel}" if shared else f"dm:slack:{team}:{user}"


def platform_user(team: str, user: str) -> str:
    return f"{team}:{user}"


def answer_channel(team: str, user: str) -> str:
    """The channel an answer is recorded with; a refusal names it, so the gateway tells the one who pressed."""
    return f"slack:{team}:{user}"


@dataclass
class PostedApproval:
    """Where one approval was posted in Slack, the digest it asks about, and its latest view (None when it was
    recovered from Slack after a restart and no event has come since)."""

    digest: str
    view: ApprovalView | None = None
    messages: set[tuple[str, str, str]] = field(default_factory=set)  # (team, channel, ts)


class SlackGateway:
    """Serves every workspace of slack.yaml over the gateway's bus connection: a `caduceus_gateway.Integration`.

    It follows the bus itself (replies through the client library, approvals by subscription), so it needs the
    connection rather than the relay the gateway hands every integration.
    """

    name = "slack"

    def __init__(self, config: SlackConfig, connection: EventConnection, *, directory: Callable[[], Directory],
                 api_url: str = SLACK_API_URL, reply_timeout_s: float = 600.0) -> None:
        self.config = config
        self.connection = connection
        self.chat = ChatClient(connection)
        self.directory = directory
        self.reply_timeout_s = reply_timeout_s
        self.installations = {team: Installation(ws, api_url, self.refuse_delivery)
                              for team, ws in config.workspaces.items()}
        self.approvals: dict[tuple[str, str], PostedApproval] = {}
        self._approval_lock = asyncio.Lock()
        self._dms: dict[tuple[str, str], str | None] = {}  # (team, approver) -> their DM channel with the bot
        self._tasks: set[asyncio.Task] = set()
        self._conversations: set[asyncio.Task] = set()  # each waiting for its turn's reply
        self.taking_messages = True
        self._refused_at: dict[str, list[float]] = {}
        self._unaudited: dict[str, int] = {}
        self._subscriptions: list = []
        self._sockets: list[AsyncSocketModeHandler] = []
        for installation in self.installations.values():
            self._listen(installation)

    # --- wiring -------------------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        """The HTTP endpoint of the Events API and interactivity (both at /slack/events), to mount in an app."""
        return [Route(EVENTS_PATH, self.handle_http, methods=["POST"])]

    async def start(self, relay: object = None) -> None:
        """Follow the approvals of every tenant served; open the Socket Mode connections."""
        for tenant in sorted(self.config.tenants()):
            self._subscriptions.append(await self.connection.subscribe(
                f"{subjects.PREFIX}.approval.*.{tenant}", self._on_approval_event))
        for installation in self.installations.values():
            if installation.workspace.mode == "socket":
                handler = AsyncSocketModeHandler(installation.app, installation.workspace.app_token,
                                                 web_client=installation.client)
                await handler.connect_async()
                self._sockets.append(handler)
        log.info("Slack: serving %d workspace(s) for tenant(s) %s", len(self.installations),
                 ", ".join(sorted(self.config.tenants())) or "none")

    async def drain(self, within_s: float) -> None:
        """Take no new message (Socket Mode connections close; the Events API answers 503, and Slack sends the
        event again later, to whichever gateway then listens); the conversations in progress get `within_s` for
        their replies, and those still waiting then tell their thread the reply was cut off."""
        self.taking_messages = False
        await self._close_sockets()
        if not self._conversations:
            return
        _, waiting = await asyncio.wait(tuple(self._conversations), timeout=within_s)
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)

    async def _close_sockets(self) -> None:
        for handler in self._sockets:
            with contextlib.suppress(Exception):
                await handler.close_async()
        self._sockets.clear()

    async def stop(self) -> None:
        await self._close_sockets()
        for sub in self._subscriptions:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for installation in self.installations.values():
            session = getattr(installation.client, "session", None)
            if session is not None:
                await session.close()

    def _spawn(self, work, name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- HTTP: which installation a request is for ---------------------------------------------------------

    async def handle_http(self, request: Request) -> Response:
        body = await request.body()
        parsed = _parse_body(body, request.headers.get("content-type", ""))
        if parsed.get("type") == "event_callback" and not self.taking_messages:
            # Not acknowledged, so Slack delivers it again later (to a replica, or to this gateway once back).
            return PlainTextResponse("the gateway is restarting", status_code=503, headers={"Retry-After": "5"})
        if parsed.get("type") == "url_verification":
            # No team in Slack's URL check: whichever installation's secret signed it answers.
            for installation in self.installations.values():
                response = await installation.http.handle(request)
                if response.status_code == 200:
                    return response
            return PlainTextResponse("", status_code=401)
        team = team_of(parsed)
        installation = self.installations.get(team or "")
        if installation is None:
            await self.refuse_delivery(team or "?", f"an event from Slack workspace {team!r}, which no installation "
                                                    "in slack.yaml serves; refused")
            return PlainTextResponse("unknown workspace", status_code=403)
        response = await installation.http.handle(request)
        if response.status_code == 401:
            await self.refuse_delivery(team or "?", "a request claiming to be from Slack workspace "
                                                    f"{team} failed signature or timestamp verification; refused")
        return response

    async def refuse_delivery(self, team: str, reason: str) -> None:
        """Audit a refused delivery: an error event on the workspace's tenant chain, or on the system chain for a
        workspace no installation serves. Anyone can send these, so each claimed workspace gets at most
        REFUSALS_AUDITED per minute; the next one audited says how many were refused unaudited meanwhile."""
        now = asyncio.get_running_loop().time()
        recent = [t for t in self._refused_at.get(team, []) if now - t < 60.0]
        if len(recent) >= REFUSALS_AUDITED:
            self._refused_at[team] = recent
            self._unaudited[team] = self._unaudited.get(team, 0) + 1
            return
        self._refused_at[team] = [*recent, now]
        if skipped := self._unaudited.pop(team, 0):
            reason = f"{reason} (and {skipped} more refused without an audit record in the last minute)"
        ws = self.config.for_team(team)
        subject = f"slack.events.{_UNSAFE.sub('-', team)[:64]}"
        if ws is not None:
            subject = f"{subjects.PREFIX}.slack.refused.{ws.tenant}"
        with contextlib.suppress(Exception):
            await self.connection.refuse(subject, json.dumps({"team": team}).encode(), reason)

    # --- listeners ---------------------------------------------------------------------------------------

    def _listen(self, installation: Installation) -> None:
        app = installation.app

        @app.event("message")
        async def on_message(event: dict) -> None:
            if event.get("channel_type") != "im" or event.get("subtype") or event.get("bot_id"):
                return  # edits, joins and bots' messages (ours included) are not turns
            await self.converse(installation, event, in_channel=False)

        @app.event("app_mention")
        async def on_mention(event: dict) -> None:
            await self.converse(installation, event, in_channel=True)

        @app.action(APPROVE_ACTION)
        async def on_approve(ack, body: dict, action: dict) -> None:
            await ack()
            await self.press(installation, body, action, "approve")

        @app.action(DENY_ACTION)
        async def on_deny(ack, body: dict, action: dict) -> None:
            await ack()
            await self.press(installation, body, action, "deny")

    async def converse(self, installation: Installation, event: dict, *, in_channel: bool) -> None:
        """One Slack message: a turn for its person, the reply in its thread (runs after the acknowledgement)."""
        ws, client = installation.workspace, installation.client
        user, channel = event.get("user"), event.get("channel")
        if not user or not channel:
            return
        thread = event.get("thread_ts") or event["ts"]
        text = _MENTION.sub("", event.get("text") or "").strip() or "hello"
        session = session_for(ws.team_id, channel, thread)

        def on_notice(notice: ChatNotice) -> None:
            self._spawn(self._post(client, channel=channel, thread_ts=thread, text=escape(notice.text)),
                        "slack-notice")

        conversation = asyncio.current_task()  # Bolt's task for this delivery: `drain` waits for it
        if conversation is not None:
            self._conversations.add(conversation)
            conversation.add_done_callback(self._conversations.discard)
        email = await self._verified_email(installation, user) if ws.link_by_email else None
        try:
            transcript = await self.chat.send(tenant=ws.tenant, token=ws.service_account_key, text=text,
                                              session_id=session, workspace=ws.workspace,
                                              channel=memory_channel(ws.team_id, channel, user, shared=in_channel),
                                              platform=PLATFORM,
                                              platform_user=platform_user(ws.team_id, user),
                                              platform_email=email, timeout=self.reply_timeout_s, on_notice=on_notice)
        except TimeoutError:
            await self._post(client, channel=channel, thread_ts=thread,
                             text="No answer in time from Caduceus; please try again, or tell an administrator.")
            return
        except asyncio.CancelledError:  # the gateway stopped before the reply came
            await self._post(client, channel=channel, thread_ts=thread,
                             text="Caduceus restarted before the reply to this message came; please send it again "
                                  "to see where things stand.")
            raise
        except Exception:  # the bus is down or refused us: say so rather than stay silent
            log.exception("the Slack message of %s in %s could not be sent to Caduceus", user, ws.team_id)
            await self._post(client, channel=channel, thread_ts=thread,
                             text="Caduceus could not take this message right now; please try again shortly.")
            return
        reply = transcript.reply
        assert reply is not None
        if reply.status == "refused" and in_channel:
            # Pairing instructions and refusals are for the person who wrote, not the whole channel.
            await self._call(client.chat_postEphemeral, channel=channel, user=user, thread_ts=thread,
                             text=escape(reply.text))
            return
        await self._post(client, channel=channel, thread_ts=thread, text=escape(reply.text))

    async def _verified_email(self, installation: Installation, user: str) -> str | None:
        """The Slack user's email (Slack confirms it), for identity to link them to the person who has it."""
        info = await self._call(installation.client.users_info, user=user)
        profile = ((info or {}).get("user") or {}).get("profile") or {}
        if ((info or {}).get("user") or {}).get("is_bot") or not isinstance(profile.get("email"), str):
            return None
        return profile["email"]

    async def press(self, installation: Installation, body: dict, action: dict, answer: str) -> None:
        """An Approve or Deny press: ask identity to vouch for the person; the desk counts it or refuses it."""
        ws, client = installation.workspace, installation.client
        user = (body.get("user") or {}).get("id")
        channel = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id")
        ts = (body.get("message") or {}).get("ts") or (body.get("container") or {}).get("message_ts")
        named = parse_button_value(action.get("value") or "")
        if not user or not channel or not ts or named is None:
            await self.refuse_delivery(ws.team_id, "an approval button press without user, message or call")
            return
        call_id, _ = named
        posted = self.approvals.get((ws.tenant, call_id))
        if posted is None or (ws.team_id, channel, ts) not in posted.messages:
            posted = await self._recover(installation, call_id, channel, ts)
        if posted is None:
            # The button names a call this message was not posted for: answer nothing.
            await self.refuse_delivery(ws.team_id, f"Slack user {user} pressed {answer} for call {call_id} on a "
                                                   "message that was not posted for that call; refused")
            await self._call(client.chat_postEphemeral, channel=channel, user=user,
                             text="That button does not belong to this approval; nothing was answered.")
            return
        request = ApprovalVouchRequested(tenant=ws.tenant, call_id=call_id, digest=posted.digest,
                                         answer=answer, channel=answer_channel(ws.team_id, user),
                                         token=ws.service_account_key, platform=PLATFORM,
                                         platform_user=platform_user(ws.team_id, user))
        await self.connection.publish(subjects.approval("vouch", ws.tenant), request)

    # --- approvals ---------------------------------------------------------------------------------------

    async def _on_approval_event(self, msg: Msg) -> None:
        try:
            event = parse_event(msg.data, subject=msg.subject)
        except ContractError:
            return
        try:
            if isinstance(event, ApprovalRefused):
                await self._tell_refused(event)
            elif (view := getattr(event, "approval", None)) is not None:
                async with self._approval_lock:
                    await self._show(view)
                    if isinstance(event, ApprovalReminded):
                        await self._remind(view, event.remind)
        except Exception:  # one approval's trouble with Slack must not stop the others
            log.exception("could not show approval event %s in Slack", event.kind)

    async def _recover(self, installation: Installation, call_id: str, channel: str,
                       ts: str) -> PostedApproval | None:
        """After a restart, Slack itself says which approval a pressed message shows: only a message our bot
        posted, whose buttons name this call, counts (people cannot post buttons as the bot)."""
        history = await self._call(installation.client.conversations_history, channel=channel, latest=ts, oldest=ts,
                                   inclusive=True, limit=1)
        message = ((history or {}).get("messages") or [None])[0]
        if not message or message.get("ts") != ts or message.get("bot_id") != await installation.bot_id():
            return None
        named = {parse_button_value(element.get("value") or "")
                 for block in message.get("blocks") or () if block.get("type") == "actions"
                 for element in block.get("elements") or ()}
        digests = {digest for call, digest in named - {None} if call == call_id}
        if len(digests) != 1:
            return None
        key = (installation.workspace.tenant, call_id)
        posted = self.approvals.setdefault(key, PostedApproval(digests.pop()))
        posted.messages.add((installation.team_id, channel, ts))
        log.info("recovered the Slack message of approval %s from Slack after a restart", call_id)
        return posted

    async def _show(self, view: ApprovalView) -> None:
        """Post a waiting approval to whoever may answer it (again when escalation adds people); update the
        messages already posted as it changes."""
        key = (view.tenant, view.call_id)
        posted = self.approvals.get(key)
        if posted is None:
            if view.status != "pending":
                return  # decided before we saw it asked: nothing to show
            posted = self.approvals[key] = PostedApproval(view.digest, view)
        elif posted.view is not None and _progress(posted.view) > _progress(view):
            return  # an older step arriving late
        else:
            posted.view = view
            for team, channel, ts in sorted(posted.messages):
                await self._call(self.installations[team].client.chat_update, channel=channel, ts=ts,
                                 text=approval_text(view), blocks=approval_blocks(view))
        if view.status != "pending":
            return
        for installation in self._installations_of(view.tenant):
            for channel in await self._approval_channels(installation, view):
                if any((t, c) == (installation.team_id, channel) for t, c, _ in posted.messages):
                    continue
                response = await self._post(installation.client, channel=channel, text=approval_text(view),
                                            blocks=approval_blocks(view))
                if response is not None:
                    posted.messages.add((installation.team_id, response["channel"], response["ts"]))

    async def _approval_channels(self, installation: Installation, view: ApprovalView) -> list[str]:
        ws = installation.workspace
        if ws.approvals_channel:
            return [ws.approvals_channel]
        channels = []
        try:
            tenant = self.directory().tenant(view.tenant)
        except Exception as exc:
            log.warning("cannot read approvers of %s from the tenants file: %s", view.tenant, exc)
            return []
        for approver in view.approvers:
            key = (ws.team_id, approver)
            if key not in self._dms:
                self._dms[key] = await self._dm_of(installation, tenant, approver)
            if self._dms[key] is not None:
                channels.append(self._dms[key])
        return channels

    async def _dm_of(self, installation: Installation, tenant, approver: str) -> str | None:
        """The DM channel with the Slack account that has the approver's email, if there is one."""
        found = tenant.find_user(approver, email_verified=False)
        if found is None:
            return None
        looked = await self._call(installation.client.users_lookupByEmail, email=found[1].email)
        if looked is None:
            log.info("approver %s has no Slack account with their email in %s", approver, installation.team_id)
            return None
        opened = await self._call(installation.client.conversations_open, users=looked["user"]["id"])
        return opened["channel"]["id"] if opened is not None else None

    async def _remind(self, view: ApprovalView, people: tuple[str, ...]) -> None:
        """Nudge, in the thread of their own DM, the approvers who have not answered yet."""
        posted = self.approvals.get((view.tenant, view.call_id))
        if posted is None or view.status != "pending":
            return
        for team, channel, ts in sorted(posted.messages):
            if any(self._dms.get((team, person)) == channel for person in people):
                await self._post(self.installations[team].client, channel=channel, thread_ts=ts,
                                 text=f"Reminder: {escape(view.requester)}'s {escape(view.tool)} call is still "
                                      "waiting for your answer.")

    async def _tell_refused(self, refused: ApprovalRefused) -> None:
        parts = refused.channel.split(":")
        if len(parts) != 3 or parts[0] != PLATFORM:
            return
        _, team, user = parts
        posted = self.approvals.get((refused.tenant, refused.call_id))
        installation = self.installations.get(team)
        if installation is None or installation.workspace.tenant != refused.tenant:
            return
        channels = sorted({c for t, c, _ in posted.messages if t == team}) if posted else []
        for channel in channels:
            await self._call(installation.client.chat_postEphemeral, channel=channel, user=user,
                             text=f"Your {escape(refused.answer)} did not count: {escape(refused.reason)}")

    def _installations_of(self, tenant: str) -> list[Installation]:
        return [i for i in self.installations.values() if i.workspace.tenant == tenant]

    # --- Web API -----------------------------------------------------------------------------------------

    async def _post(self, client, **kwargs) -> dict | None:
        return await self._call(client.chat_postMessage, **kwargs)

    async def _call(self, method, **kwargs) -> dict | None:
        """A Web API call (rate limits are waited out by the client); None, logged, when Slack refuses it."""
        try:
            response = await method(**kwargs)
        except SlackApiError as exc:
            log.warning("Slack refused %s: %s", getattr(method, "__name__", "a call"), exc.response.get("error"))
            return None
        return response.data if isinstance(response.data, dict) else None


def _progress(view: ApprovalView) -> tuple[bool, int, bool]:
    # Events can arrive out of order: never let an older step overwrite a later one.
    return view.status != "pending", len(view.votes), view.escalated


def _parse_body(body: bytes, content_type: str) -> dict:
    """The JSON of an Events API request or the `payload` of an interactivity form, else {}."""
    try:
        if "application/x-www-form-urlencoded" in content_type:
            payload = parse_qs(body.decode()).get("payload", [""])[0]
            return json.loads(payload) if payload else {}
        data = json.loads(body or b"{}")
        return data if isinstance(data, dict) else {}
    except (ValueError, UnicodeDecodeError):
        return {}


__all__ = ["EVENTS_PATH", "SlackGateway", "SlackWorkspace"]
