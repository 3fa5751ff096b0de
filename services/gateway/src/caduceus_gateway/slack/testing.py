"""Slack at the wire, for tests: a local server speaking Slack's Web API (and the Socket Mode websocket),
and requests signed as Slack signs them. Slack itself cannot be reached here; nothing of ours is patched."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlencode

import httpx
import websockets
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from caduceus_web import HttpServer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ApiCall:
    method: str
    token: str
    params: dict
    answer: dict = field(default_factory=dict)


@dataclass
class FakeSlack:
    """The Web API of several workspaces: each bot token belongs to one team."""

    teams: dict[str, str] = field(default_factory=dict)  # bot or app token -> team id
    emails: dict[str, str] = field(default_factory=dict)  # email -> Slack user id
    calls: list[ApiCall] = field(default_factory=list)
    throttle: dict[str, int] = field(default_factory=dict)  # method -> how many 429s before it works
    throttled: list[tuple[str, float]] = field(default_factory=list)
    socket_url: str = ""
    _ts: itertools.count = field(default_factory=lambda: itertools.count(1))
    # What each channel holds, as conversations.history shows it: (channel, ts) -> message
    messages: dict[tuple[str, str], dict] = field(default_factory=dict)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/api/{method}", self._api, methods=["GET", "POST"])])

    async def _api(self, request: Request) -> JSONResponse:
        method = request.path_params["method"]
        token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        params: dict = dict(request.query_params)
        body = await request.body()
        if body:
            if request.headers.get("content-type", "").startswith("application/json"):
                params.update(json.loads(body))
            else:
                params.update({k: v[0] for k, v in parse_qs(body.decode()).items()})
        if self.throttle.get(method, 0) > 0:
            self.throttle[method] -= 1
            self.throttled.append((method, time.monotonic()))
            return JSONResponse({"ok": False, "error": "ratelimited"}, status_code=429, headers={"Retry-After": "1"})
        team = self.teams.get(token)
        if team is None:
            return JSONResponse({"ok": False, "error": "invalid_auth"})
        answer = self._answer(method, team, params)
        self.calls.append(ApiCall(method, token, params, answer))
        return JSONResponse(answer)

    def _answer(self, method: str, team: str, params: dict) -> dict:
        if method == "auth.test":
            return {"ok": True, "team_id": team, "team": f"team {team}", "user_id": f"UBOT{team}",
                    "bot_id": f"BBOT{team}", "user": "caduceus", "url": f"https://{team.lower()}.slack.com/"}
        if method in ("chat.postMessage", "chat.update"):
            ts = params.get("ts") or f"1700000000.{next(self._ts):06d}"
            blocks = params.get("blocks")
            self.messages[(params.get("channel"), ts)] = {
                "type": "message", "ts": ts, "text": params.get("text"), "bot_id": f"BBOT{team}",
                "blocks": json.loads(blocks) if isinstance(blocks, str) else blocks or []}
            return {"ok": True, "channel": params.get("channel"), "ts": ts,
                    "message": {"text": params.get("text"), "ts": ts}}
        if method == "chat.postEphemeral":
            return {"ok": True, "message_ts": f"1700000000.{next(self._ts):06d}"}
        if method == "conversations.open":
            return {"ok": True, "channel": {"id": f"D{params.get('users')}"}}
        if method == "users.lookupByEmail":
            user = self.emails.get(params.get("email", ""))
            return {"ok": True, "user": {"id": user}} if user else {"ok": False, "error": "users_not_found"}
        if method == "conversations.history":
            found = self.messages.get((params.get("channel"), params.get("latest")))
            return {"ok": True, "messages": [found] if found else [], "has_more": False}
        if method == "users.info":
            email = next((e for e, u in self.emails.items() if u == params.get("user")), None)
            profile = {"email": email} if email else {}
            return {"ok": True, "user": {"id": params.get("user"), "is_bot": False, "profile": profile}}
        if method == "apps.connections.open":
            return {"ok": True, "url": self.socket_url}
        return {"ok": False, "error": "unknown_method"}

    def answered(self, method: str, **where) -> list[dict]:
        """What the fake answered to the calls of `method` matching `where` (e.g. the ts of a posted message)."""
        return [c.answer for c in self.calls
                if c.method == method and all(c.params.get(k) == v for k, v in where.items())]

    def made(self, method: str, **where) -> list[dict]:
        return [c.params for c in self.calls
                if c.method == method and all(c.params.get(k) == v for k, v in where.items())]

    async def until(self, method: str, timeout: float = 30.0, count: int = 1, **where) -> list[dict]:
        """The calls of `method` matching `where`, once there are at least `count` of them."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            found = self.made(method, **where)
            if len(found) >= count:
                return found
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no {method} {where} within {timeout} s; calls: "
                                     f"{[(c.method, c.params) for c in self.calls]}")
            await asyncio.sleep(0.05)


async def serve_fake_slack(slack: FakeSlack) -> tuple[HttpServer, str]:
    server = HttpServer(slack.app(), "127.0.0.1", free_port(), what="fake Slack", port_setting="-")
    await server.start()
    return server, f"http://127.0.0.1:{server.port}/api/"


def signed_headers(secret: str, body: bytes, timestamp: int | None = None, **extra: str) -> dict[str, str]:
    """Headers as Slack sends them: v0 signature over `v0:<timestamp>:<body>` with the app's signing secret."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}", **extra}


def event_body(team: str, event: dict, event_id: str | None = None) -> dict:
    return {"token": "legacy", "team_id": team, "api_app_id": "A1", "type": "event_callback",
            "event_id": event_id or f"Ev{time.monotonic_ns()}", "event_time": int(time.time()), "event": event}


def dm(team: str, user: str, text: str, ts: str, thread_ts: str | None = None) -> dict:
    event = {"type": "message", "channel_type": "im", "channel": f"D{user}", "user": user, "text": text, "ts": ts,
             "team": team}
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def press_payload(team: str, user: str, channel: str, ts: str, action_id: str, value: str) -> dict:
    return {"type": "block_actions", "team": {"id": team}, "user": {"id": user, "team_id": team},
            "api_app_id": "A1", "trigger_id": f"trig-{time.monotonic_ns()}", "channel": {"id": channel},
            "container": {"type": "message", "channel_id": channel, "message_ts": ts},
            "message": {"ts": ts, "text": "approval"},
            "actions": [{"action_id": action_id, "value": value, "type": "button",
                         "action_ts": str(time.time()), "block_id": "b"}]}


async def deliver_event(url: str, secret: str, body: dict, *, timestamp: int | None = None,
                        **headers: str) -> httpx.Response:
    raw = json.dumps(body).encode()
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(url, content=raw, headers={"Content-Type": "application/json",
                                                           **signed_headers(secret, raw, timestamp, **headers)})


async def deliver_press(url: str, secret: str, payload: dict) -> httpx.Response:
    raw = urlencode({"payload": json.dumps(payload)}).encode()
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(url, content=raw, headers={"Content-Type": "application/x-www-form-urlencoded",
                                                           **signed_headers(secret, raw)})


class FakeSocketMode:
    """Slack's Socket Mode endpoint: says hello, sends envelopes, collects the app's acknowledgements."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/link"
        self.acks: list[dict] = []
        self._outbox: asyncio.Queue[dict] = asyncio.Queue()
        self.connected = asyncio.Event()
        self._server = None

    async def start(self) -> None:
        self._server = await websockets.serve(self._session, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def send(self, envelope_type: str, payload: dict) -> str:
        envelope_id = f"env-{time.monotonic_ns()}"
        await self._outbox.put({"envelope_id": envelope_id, "type": envelope_type, "payload": payload,
                                "accepts_response_payload": False, "retry_attempt": 0, "retry_reason": ""})
        return envelope_id

    async def _session(self, ws) -> None:
        await ws.send(json.dumps({"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A1"}}))
        self.connected.set()

        async def outgoing() -> None:
            while True:
                await ws.send(json.dumps(await self._outbox.get()))

        sender = asyncio.create_task(outgoing())
        try:
            async for message in ws:
                data = json.loads(message)
                if "envelope_id" in data:
                    self.acks.append(data)
        except websockets.ConnectionClosed:
            pass
        finally:
            sender.cancel()
