"""One Slack workspace's installation: a Bolt app speaking as the bot there, for one tenant.

Bolt verifies each HTTP request's signature with this workspace's signing secret and refuses stale
timestamps (older than five minutes); it acknowledges within Slack's three seconds and runs the listener
after the acknowledgement. Socket Mode envelopes come over the app-level token's websocket instead.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.response import BoltResponse
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from caduceus_gateway.slack.config import SlackWorkspace

log = logging.getLogger(__name__)

SLACK_API_URL = "https://slack.com/api/"
RATE_LIMIT_RETRIES = 4


def web_client(token: str, api_url: str = SLACK_API_URL) -> AsyncWebClient:
    """A Web API client that waits out Slack's rate limits (Retry-After) and retries brief outages."""
    return AsyncWebClient(token=token, base_url=api_url, timeout=15, retry_handlers=[
        AsyncConnectionErrorRetryHandler(max_retry_count=2),
        AsyncRateLimitErrorRetryHandler(max_retry_count=RATE_LIMIT_RETRIES),
        AsyncServerErrorRetryHandler(max_retry_count=2),
    ])


class SeenOnce:
    """Remembers the last few thousand delivery keys: Slack delivers again when unsure, we act once."""

    def __init__(self, size: int = 4096) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.size = size

    def first_time(self, key: str) -> bool:
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return True


def delivery_key(body: dict) -> str | None:
    """What identifies one delivery across Slack's retries: the event id, or the button press itself."""
    if body.get("event_id"):
        return f"event:{body['event_id']}"
    if body.get("type") == "block_actions":
        actions = body.get("actions") or [{}]
        return f"press:{(body.get('user') or {}).get('id')}:{actions[0].get('action_ts')}:{body.get('trigger_id')}"
    return None


def team_of(body: dict) -> str | None:
    """The Slack workspace a delivery claims to come from (verified by the signature or the socket)."""
    team = body.get("team_id") or body.get("team")
    if isinstance(team, dict):
        team = team.get("id")
    if not team and isinstance(body.get("user"), dict):
        team = body["user"].get("team_id")
    return team if isinstance(team, str) else None


Refusal = Callable[[str, str], Awaitable[None]]  # (team id, reason): audit a delivery that is refused


class Installation:
    """The Bolt app of one workspace; the gateway adds the listeners."""

    def __init__(self, workspace: SlackWorkspace, api_url: str, refuse: Refusal) -> None:
        self.workspace = workspace
        self.client = web_client(workspace.bot_token, api_url)
        self.app = AsyncApp(signing_secret=workspace.signing_secret, client=self.client,
                            name=f"caduceus-slack-{workspace.team_id}", process_before_response=False)
        self.http = AsyncSlackRequestHandler(self.app)
        self.seen = SeenOnce()
        self._refuse = refuse
        self._bot_id: str | None = None
        self.app.use(self._only_this_workspace_once)

    async def bot_id(self) -> str | None:
        """The bot's id in this workspace (auth.test, asked once): what marks a message as ours."""
        if self._bot_id is None:
            try:
                self._bot_id = (await self.client.auth_test()).get("bot_id")
            except Exception as exc:
                log.warning("auth.test failed in %s: %s", self.team_id, exc)
        return self._bot_id

    @property
    def team_id(self) -> str:
        return self.workspace.team_id

    async def _only_this_workspace_once(self, body: dict, next: Callable[[], Awaitable[None]]) -> BoltResponse | None:
        team = team_of(body)
        if team != self.team_id:
            # A socket or signing secret shared by several workspaces must still only speak for this one.
            await self._refuse(team or "?", f"a delivery for Slack workspace {team!r} reached the installation "
                                            f"of {self.team_id}; refused")
            return BoltResponse(status=403, body="")
        key = delivery_key(body)
        if key is not None and not self.seen.first_time(key):
            log.info("Slack delivered %s again; acknowledged, not handled twice", key)
            return BoltResponse(status=200, body="")
        await next()
        return None
