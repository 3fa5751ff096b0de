"""The web chat on the running stack, over HTTP as a browser speaks it: sign in through the dev issuer
(authorization code with PKCE), start a conversation in a workspace, and see the turn's tool calls, their
decisions and the reply arrive on the event stream; the conversation is kept and listed. Attacks: another person
(by link, event stream or post), a request without the page's CSRF token, a forged cookie."""

from __future__ import annotations

import asyncio
import json
import re
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from caduceus.cli import app
from caduceus.commands.demo import APPROVAL_MESSAGE, DEMO_MESSAGE
from caduceus_client import ChatClient
from caduceus_identity.devtoken import mint_dev_token

pytestmark = pytest.mark.timeout(240)


class Browser:
    """An HTTP client holding one person's cookies, as their browser would."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = httpx.AsyncClient(follow_redirects=False, timeout=30)
        self.csrf = ""

    async def sign_in(self, tenant: str, user: str) -> None:
        started = await self.http.get(f"{self.base_url}/login")
        assert started.status_code == 303
        authorize = started.headers["location"]
        params = dict(parse_qsl(urlsplit(authorize).query))
        assert params["code_challenge_method"] == "S256" and params["code_challenge"]  # PKCE
        chosen = await self.http.post(authorize.split("?")[0], data={**params, "who": f"{tenant}/{user}"})
        assert chosen.status_code == 303, chosen.text
        back = await self.http.get(chosen.headers["location"])
        assert back.status_code == 303 and back.headers["location"] == "/"
        home = await self.get("/")
        self.csrf = re.search(r'data-csrf="([^"]+)"', home.text).group(1)

    async def get(self, path: str) -> httpx.Response:
        return await self.http.get(f"{self.base_url}{path}")

    async def new_conversation(self, workspace: str = "default") -> str:
        made = await self.http.post(f"{self.base_url}/c", data={"csrf": self.csrf, "workspace": workspace})
        assert made.status_code == 303, made.text
        return made.headers["location"].rsplit("/", 1)[1]

    async def say(self, conversation: str, text: str, csrf: str | None = None) -> httpx.Response:
        return await self.http.post(f"{self.base_url}/c/{conversation}/messages", json={"text": text},
                                    headers={"X-CSRF-Token": self.csrf if csrf is None else csrf})

    async def turn(self, conversation: str, text: str, timeout: float = 180) -> list[dict]:
        """Send a message with the conversation's event stream open; the updates until the reply."""
        updates: list[dict] = []
        connected = asyncio.Event()

        async def follow() -> None:
            async with self.http.stream("GET", f"{self.base_url}/c/{conversation}/events",
                                        timeout=httpx.Timeout(30, read=None)) as stream:
                assert stream.status_code == 200
                assert stream.headers["content-type"].startswith("text/event-stream")
                async for line in stream.aiter_lines():
                    if line.startswith(": connected"):
                        connected.set()
                    if line.startswith("data: "):
                        updates.append(json.loads(line[6:]))
                        if updates[-1]["kind"] == "reply":
                            return

        following = asyncio.create_task(follow())
        await asyncio.wait_for(connected.wait(), 10)
        sent = await self.say(conversation, text)
        assert sent.status_code == 202, sent.text
        await asyncio.wait_for(following, timeout)
        return updates

    async def close(self) -> None:
        await self.http.aclose()


@pytest.fixture()
async def alice(stack):
    browser = Browser(stack.info.webchat_url)
    await browser.sign_in("acme", "alice")
    yield browser
    await browser.close()


@pytest.fixture()
async def bob(stack):
    browser = Browser(stack.info.webchat_url)
    await browser.sign_in("acme", "bob")
    yield browser
    await browser.close()


async def test_a_signed_in_person_chats_and_sees_each_tool_call_with_its_decision(stack, alice) -> None:
    conversation = await alice.new_conversation("default")
    updates = await alice.turn(conversation, DEMO_MESSAGE)
    calls = {u["call_id"]: u["tool"] for u in updates if u["kind"] == "call"}
    assert sorted(calls.values()) == ["terminal", "write_file"]
    verdicts = {calls[u["call_id"]]: u["status"] for u in updates if u["kind"] == "decision"}
    assert verdicts["terminal"] == "allow" and verdicts["write_file"] == "deny"
    reply = updates[-1]
    assert reply["kind"] == "reply" and reply["status"] == "ok" and "Workspace check" in reply["text"]

    # Kept: listed on the home page and shown again, calls and reply included, when the conversation is opened.
    home = await alice.get("/")
    assert f'href="/c/{conversation}"' in home.text and "Please check the workspace" in home.text
    page = await alice.get(f"/c/{conversation}")
    assert page.status_code == 200
    assert 'class="tool">terminal<' in page.text and 'verdict deny' in page.text and "Workspace check" in page.text


async def test_another_person_cannot_see_or_write_to_a_conversation_even_by_its_link(stack, alice, bob) -> None:
    conversation = await alice.new_conversation()
    sent = await alice.say(conversation, "hello")
    assert sent.status_code == 202
    assert (await bob.get(f"/c/{conversation}")).status_code == 404
    assert (await bob.get(f"/c/{conversation}/events")).status_code == 404
    assert (await bob.say(conversation, "hello from bob")).status_code == 404
    assert conversation not in (await bob.get("/")).text


async def test_a_request_without_the_pages_csrf_token_is_refused_and_sends_nothing(stack, alice) -> None:
    conversation = await alice.new_conversation()
    forged = await alice.say(conversation, "hello", csrf="")
    assert forged.status_code == 403
    made = await alice.http.post(f"{alice.base_url}/c", data={"workspace": "default"})
    assert made.status_code == 403
    page = await alice.get(f"/c/{conversation}")
    assert "hello" not in page.text.split('id="transcript"')[1].split("</ol>")[0]


async def test_pages_carry_a_strict_content_security_policy_and_a_forged_cookie_is_no_session(stack, alice) -> None:
    home = await alice.get("/")
    csp = home.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert home.headers["x-frame-options"] == "DENY" and home.headers["x-content-type-options"] == "nosniff"
    cookie = next(c for c in alice.http.cookies.jar if c.name == "caduceus_chat")
    assert cookie.has_nonstandard_attr("HttpOnly") or cookie._rest.get("HttpOnly") is not None
    async with httpx.AsyncClient(timeout=10, cookies={"caduceus_chat": cookie.value[:-4] + "AAAA"}) as stranger:
        forged = await stranger.get(f"{alice.base_url}/")
    assert forged.status_code == 303 and forged.headers["location"].startswith("/login")


async def test_a_message_is_escaped_wherever_it_is_shown(stack, alice) -> None:
    conversation = await alice.new_conversation()
    hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    assert (await alice.say(conversation, hostile)).status_code == 202
    page = await alice.get(f"/c/{conversation}")
    assert "<script>alert(1)" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "<img src=x" not in (await alice.get("/")).text


async def test_what_alice_says_in_a_shared_channel_is_not_in_the_memory_of_her_web_chat(stack, alice) -> None:
    secret = "the shared channel's launch word is PERIWINKLE"
    client = await ChatClient.connect(stack.info.bus_settings("client"))
    token = mint_dev_token(stack.info.dev_issuer_url, "acme", "alice")
    try:
        told = await client.send(tenant="acme", token=token, text=f"Remember that {secret}",
                                 channel="channel:slack:T1:C1", timeout=120)
        assert told.reply.status == "ok", told.reply.text
        conversation = await alice.new_conversation()
        in_web = await alice.turn(conversation, "What do you remember?")
        in_channel = await client.send(tenant="acme", token=token, text="What do you remember?",
                                       channel="channel:slack:T1:C1", timeout=120)
    finally:
        await client.close()
    assert secret not in in_web[-1]["text"]
    assert secret in in_channel.reply.text


async def test_only_an_approver_answering_for_that_exact_call_counts_from_the_web_chat(stack, alice, bob) -> None:
    carol = Browser(stack.info.webchat_url)
    await carol.sign_in("acme", "carol")
    try:
        conversation = await alice.new_conversation()
        assert (await alice.say(conversation, APPROVAL_MESSAGE)).status_code == 202
        waiting = None
        for _ in range(300):
            listed = (await carol.get("/api/approvals")).json()["approvals"]
            waiting = next((a for a in listed if a["requester"] == "alice" and "rm -rf build" in json.dumps(a["args"])),
                           None)
            if waiting:
                break
            await asyncio.sleep(0.2)
        assert waiting is not None, "carol was never shown alice's call"
        assert (await bob.get("/api/approvals")).json()["approvals"] == []  # bob is no approver

        async def answer(browser: Browser, digest: str, csrf: str | None = None) -> httpx.Response:
            return await browser.http.post(f"{browser.base_url}/api/approvals/{waiting['call_id']}/approve",
                                           json={"digest": digest},
                                           headers={"X-CSRF-Token": browser.csrf if csrf is None else csrf})

        assert (await answer(bob, waiting["digest"])).status_code == 409
        assert (await answer(carol, "0" * 64)).status_code == 409  # another call's arguments
        assert (await answer(carol, waiting["digest"], csrf="")).status_code == 403
        assert any(a["call_id"] == waiting["call_id"] for a in (await carol.get("/api/approvals")).json()["approvals"])
        approved = await answer(carol, waiting["digest"])
        assert approved.status_code == 200 and approved.json()["status"] == "approved"
    finally:
        await carol.close()


async def test_a_person_removed_from_the_tenant_is_signed_out_at_once(stack, tmp_path) -> None:
    dana = Browser(stack.info.webchat_url)
    tenants = stack.layout.root / "tenants.yaml"
    before = tenants.read_text()
    data = yaml.safe_load(before)
    data["tenants"]["acme"]["users"]["dana"] = {"email": "dana@acme.example", "roles": ["member"]}
    try:
        apply_tenants(stack, tmp_path, data)
        await dana.sign_in("acme", "dana")
        assert (await dana.get("/")).status_code == 200
        del data["tenants"]["acme"]["users"]["dana"]
        apply_tenants(stack, tmp_path, data)
        for _ in range(50):  # the directory is read again when the file changes
            gone = await dana.get("/")
            if gone.status_code == 303:
                break
            await asyncio.sleep(0.1)
        assert gone.status_code == 303 and gone.headers["location"].startswith("/login")
    finally:
        apply_tenants(stack, tmp_path, yaml.safe_load(before))
        await dana.close()


def apply_tenants(stack, tmp_path, data: dict) -> None:
    source = tmp_path / "tenants.yaml"
    source.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["tenants", "apply", str(source), "--state-dir", str(stack.layout.root)])
    assert result.exit_code == 0, result.output


async def test_a_turn_refused_for_budget_tells_the_person_what_share_is_left(stack, tmp_path) -> None:
    """dora's model calls have a small token budget (a limit for her `auditor` role only): her turn is refused
    before any model call, and the reply she reads, in the web chat and in `caduceus chat`, says what is left."""
    from caduceus_contracts import new_id

    tenants = stack.layout.root / "tenants.yaml"
    before = tenants.read_text()
    data = yaml.safe_load(before)
    data["tenants"]["acme"]["users"]["dora"] = {"email": "dora@acme.example", "roles": ["member", "auditor"]}
    shipped = (stack.layout.root / "policy.yaml").read_text()
    limit = "      - {id: terminal-calls-per-user, tools: [terminal], per: user, max_calls: 120, window: 1m}\n"
    assert limit in shipped
    metered = re.sub(r'^version: "[^"]*"', 'version: "budget-reply.1"', shipped, count=1, flags=re.M).replace(
        limit, limit + "      - {id: auditor-tokens, max_tokens: 50, window: 1h, per: user, roles: [auditor]}\n")
    candidate = tmp_path / "policy.yaml"
    candidate.write_text(metered)
    dora = Browser(stack.info.webchat_url)
    try:
        apply_tenants(stack, tmp_path, data)
        published = await asyncio.to_thread(CliRunner().invoke, app, ["policy", "publish", str(candidate),
                                                                      "--state-dir", str(stack.layout.root)])
        assert published.exit_code == 0, published.output
        await dora.sign_in("acme", "dora")
        conversation = await dora.new_conversation("default")
        reply: dict = {}
        for _ in range(30):  # the published pack is live within moments
            reply = (await dora.turn(conversation, "hello"))[-1]
            if "over budget" in reply.get("text", ""):
                break
            await asyncio.sleep(0.5)
        text = reply["text"]
        assert "over budget (auditor-tokens)" in text, text
        assert "auditor-tokens: 50 tokens of 50 tokens per user per 1h left (100%)" in text
        assert "this call needs about" in text and "Ask an admin for more" in text

        client = await ChatClient.connect(stack.info.bus_settings("client"))
        try:
            transcript = await client.send(tenant="acme", token=mint_dev_token(stack.info.dev_issuer_url, "acme",
                                                                               "dora"),
                                           text="hello again", session_id=f"s-{new_id()[:16]}", timeout=120)
        finally:
            await client.close()
        assert transcript.reply is not None and "50 tokens of 50 tokens per user per 1h left (100%)" in \
            transcript.reply.text
        # alice, without the role, is not metered by it
        alice = await ChatClient.connect(stack.info.bus_settings("client"))
        try:
            hers = await alice.send(tenant="acme", token=mint_dev_token(stack.info.dev_issuer_url, "acme", "alice"),
                                    text="hello", session_id=f"s-{new_id()[:16]}", timeout=120)
        finally:
            await alice.close()
        assert hers.reply is not None and "over budget" not in hers.reply.text
    finally:
        restored = tmp_path / "shipped.yaml"
        restored.write_text(re.sub(r'^version: "[^"]*"', 'version: "budget-reply.2"', shipped, count=1, flags=re.M))
        await asyncio.to_thread(CliRunner().invoke, app, ["policy", "publish", str(restored), "--state-dir",
                                                          str(stack.layout.root)])
        apply_tenants(stack, tmp_path, yaml.safe_load(before))
        await dora.close()
