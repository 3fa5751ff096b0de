"""SIGTERM while the gateway holds turns in progress: a web chat turn and a Slack message whose replies come after
the signal still reach their people (the event stream, the Slack thread) and are kept with the conversation; a turn
whose reply does not come within CADUCEUS_GATEWAY_DRAIN_S is told so, never left in silence; a new message is
refused, on a connection the browser still holds (503, the page says why) and on a new one; the event streams end
cleanly and the process exits 0. The gateway runs as `python -m caduceus_gateway`, the way `caduceus up`, compose
and Kubernetes run it; the test stands in for identity and the broker, answering on the bus when it chooses."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from caduceus_bus import BusSettings, EventConnection
from caduceus_contracts import ChatMessageIn, ChatReply, parse_event, subjects
from caduceus_directory.testing import TENANTS
from caduceus_embedded.ports import free_port
from caduceus_gateway.slack.testing import FakeSlack, deliver_event, dm, event_body, serve_fake_slack
from caduceus_gateway.store import ConversationStore
from caduceus_gateway.web.sessions import SESSION_COOKIE, CookieJar, load_or_create_secret

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]
DRAIN_S = 4.0
SLACK = ("workspaces:\n  T0ACME:\n    tenant: acme\n    bot_token: env:ACME_BOT\n    signing_secret: env:ACME_SECRET\n"
         "    service_account_key: env:ACME_KEY\n")


async def test_turns_in_progress_at_sigterm_get_their_replies_and_nothing_new_is_taken(tmp_path: Path,
                                                                                       fresh_nats: Any) -> None:
    (tmp_path / "tenants.yaml").write_text(TENANTS)
    (tmp_path / "slack.yaml").write_text(SLACK)
    jar = CookieJar(load_or_create_secret(tmp_path / "keys" / "gateway-web.secret"), 3600)
    cookie, _ = jar.session("acme", "alice", "alice-id-token", None)
    csrf = jar.signed_in(cookie).csrf
    slack = FakeSlack(teams={"xoxb-acme": "T0ACME"})
    slack_api, slack_url = await serve_fake_slack(slack)
    bus = await EventConnection.connect(BusSettings(nats_url=fresh_nats.url), "identity-and-broker-stand-in")
    asked: dict[str, ChatMessageIn] = {}  # by text: the turns the gateway sent, unanswered until the test says

    async def on_chat_in(msg: Any) -> None:
        message = parse_event(msg.data, expect=ChatMessageIn)
        asked[message.text] = message

    await bus.subscribe(subjects.CHAT_IN_ALL, on_chat_in)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "CADUCEUS_NATS_URL": fresh_nats.url, "CADUCEUS_STATE_DIR": str(tmp_path),
           "CADUCEUS_WEB_PORT": str(port), "CADUCEUS_GATEWAY_DRAIN_S": str(DRAIN_S),
           "CADUCEUS_SLACK_API_URL": slack_url, "ACME_BOT": "xoxb-acme", "ACME_SECRET": "acme-secret",
           "ACME_KEY": "cad_sa_acme"}
    process = subprocess.Popen([sys.executable, "-m", "caduceus_gateway"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    browser = httpx.AsyncClient(base_url=base, cookies={SESSION_COOKIE: cookie}, timeout=10)
    try:
        await healthy(bus)
        answered, cut_off = await conversation(browser, csrf), await conversation(browser, csrf)
        opened = {cid: asyncio.Event() for cid in (answered, cut_off)}
        streams = {cid: asyncio.create_task(follow(browser, cid, opened[cid])) for cid in opened}
        for stream_opened in opened.values():  # both event streams are open before anything is said
            await asyncio.wait_for(stream_opened.wait(), 10)
        for cid, text in ((answered, "what is 2+2?"), (cut_off, "wait for an approver")):
            sent = await browser.post(f"/c/{cid}/messages", json={"text": text}, headers={"X-CSRF-Token": csrf})
            assert sent.status_code == 202, sent.text
        delivered = await deliver_event(f"{base}/slack/events", "acme-secret",
                                        event_body("T0ACME", dm("T0ACME", "U1", "hello from slack", "5.1")))
        assert delivered.status_code == 200
        await until(lambda: len(asked) == 3, "the three turns on the bus")

        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        await asyncio.sleep(0.5)
        refused = await browser.post(f"/c/{answered}/messages", json={"text": "one more"},
                                     headers={"X-CSRF-Token": csrf})  # on the connection the browser keeps
        assert refused.status_code == 503 and "restarting" in refused.json()["error"]
        async with httpx.AsyncClient(base_url=base, cookies={SESSION_COOKIE: cookie}) as new_tab:
            with pytest.raises(httpx.ConnectError):
                await new_tab.post(f"/c/{answered}/messages", json={"text": "one more"},
                                   headers={"X-CSRF-Token": csrf})
        with pytest.raises(httpx.ConnectError):
            await deliver_event(f"{base}/slack/events", "acme-secret",
                                event_body("T0ACME", dm("T0ACME", "U1", "one more", "6.1")))
        assert "one more" not in asked

        await asyncio.sleep(0.5)  # a second after the signal: the bus brings two of the replies
        for text, reply in (("what is 2+2?", "4"), ("hello from slack", "hello, U1")):
            message = asked[text]
            await bus.publish(subjects.chat_reply("acme", message.session_id),
                              ChatReply(tenant="acme", message_id=message.message_id,
                                        session_id=message.session_id, text=reply))

        seen = {cid: await asyncio.wait_for(stream, DRAIN_S + 10) for cid, stream in streams.items()}
        assert [(u["kind"], u["text"]) for u in seen[answered]] == [("reply", "4")]
        assert [u["kind"] for u in seen[cut_off]] == ["error"]
        assert "restarted before this message's reply came" in seen[cut_off][0]["text"]
        posted = await slack.until("chat.postMessage", channel="DU1", thread_ts="5.1", timeout=5)
        assert [p["text"] for p in posted] == ["hello, U1"]

        output = (await asyncio.to_thread(process.communicate, timeout=30))[0].decode()
        assert process.returncode == 0, output[-3000:]
        assert time.monotonic() - signalled < DRAIN_S + 4, "the drain is bounded"
        store = ConversationStore(tmp_path / "gateway.db")  # what the page shows when it is opened again
        kept = {cid: [(e.kind, e.body["text"]) for e in store.entries(store.get(cid, "acme", "alice"))]
                for cid in (answered, cut_off)}
        store.close()
        assert kept[answered] == [("person", "what is 2+2?"), ("reply", "4")]
        assert [kind for kind, _ in kept[cut_off]] == ["person", "error"]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        await browser.aclose()
        await bus.close()
        await slack_api.stop()


async def conversation(browser: httpx.AsyncClient, csrf: str) -> str:
    made = await browser.post("/c", data={"csrf": csrf, "workspace": "default"})
    assert made.status_code == 303, made.text
    return made.headers["location"].rsplit("/", 1)[1]


async def follow(browser: httpx.AsyncClient, cid: str, opened: asyncio.Event) -> list[dict]:
    """The updates a browser's event stream shows, until the server ends it (a cut stream raises)."""
    lines: list[str] = []
    async with browser.stream("GET", f"/c/{cid}/events", timeout=httpx.Timeout(10, read=None)) as stream:
        assert stream.status_code == 200
        async for line in stream.aiter_lines():
            opened.set()
            lines.append(line)
    return [json.loads(line[6:]) for line in lines if line.startswith("data: ")]


async def healthy(bus: EventConnection) -> None:
    for _ in range(300):
        try:
            if (await bus.nc.request("caduceus.health.gateway", b"", timeout=0.2)).data == b"ok":
                return
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            await asyncio.sleep(0.1)
    raise AssertionError("the gateway did not answer its health check within 60 s")


async def until(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        await asyncio.sleep(0.05)
