"""Whatever a person, the agent or a tool puts in a conversation is shown as text: hostile strings (hypothesis)
in the message, the reply, a notice, a tool's name, arguments and result never become markup on the page."""

from __future__ import annotations

import asyncio
from functools import cache
from html.parser import HTMLParser
from pathlib import Path

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caduceus_gateway.relay import Relay
from caduceus_gateway.store import ConversationStore
from caduceus_gateway.web.routes import WebContext, build_app
from caduceus_gateway.web.sessions import SESSION_COOKIE, CookieJar

HOSTILE = st.one_of(
    st.text(max_size=200),
    st.sampled_from(["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "\"><svg onload=alert(1)>",
                     "</pre><iframe src=javascript:alert(1)>", "{{ 7*7 }}", "' onmouseover='alert(1)"]),
)


class Markup(HTMLParser):
    """Every tag and attribute name on the page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.handlers: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        self.handlers += [name for name, _ in attrs if name.startswith("on")]


class NoBus:
    async def publish(self, subject, event) -> None: ...

    async def refuse(self, subject, body, reason) -> None: ...


def page_markup(tmp: Path, texts: list[str]) -> Markup:
    store = ConversationStore(tmp / "gateway.db")
    person, reply, notice, tool, arg, result = texts
    store.start("w-x", "acme", "alice", "default", "web:alice", person)
    store.add("w-x", "person", {"text": person})
    store.add("w-x", "call", {"call_id": "c1", "tool": tool, "args": {arg: arg}})
    store.add("w-x", "decision", {"call_id": "c1", "status": "allow", "text": notice})
    store.add("w-x", "outcome", {"call_id": "c1", "status": "ok", "text": result})
    store.add("w-x", "notice", {"text": notice})
    store.add("w-x", "reply", {"text": reply, "status": "ok"})
    cookies = CookieJar(b"k" * 32, 3600)

    async def nothing(*_args) -> None: ...

    app = build_app(WebContext(relay=Relay(NoBus()), store=store, cookies=cookies, oidc=None,
                               workspaces=lambda tenant: ("default",),
                               member=lambda identity: identity.subject, start_turn=nothing, audit_refusal=nothing))
    cookie, _ = cookies.session("acme", "alice", "token", None)

    async def fetch() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://chat.test",
                                     cookies={SESSION_COOKIE: cookie}) as client:
            return await client.get("/c/w-x"), await client.get("/")

    shown, listing = asyncio.run(fetch())
    store.close()
    assert shown.status_code == 200 and listing.status_code == 200
    markup = Markup()
    markup.feed(shown.text + listing.text)
    return markup


@cache
def reference_markup(tmp: Path) -> Markup:
    return page_markup(tmp, ["hello", "hi", "note", "terminal", "command", "ok"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(HOSTILE, min_size=6, max_size=6))
def test_hostile_text_anywhere_in_a_conversation_never_becomes_markup(tmp_path_factory, texts) -> None:
    expected = reference_markup(tmp_path_factory.getbasetemp())
    seen = page_markup(tmp_path_factory.mktemp("hostile"), [t or "x" for t in texts])
    assert seen.tags == expected.tags
    assert seen.handlers == []
