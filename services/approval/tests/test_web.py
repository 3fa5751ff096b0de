"""The approver web UI and API against the real bus, Temporal dev server and a real OIDC sign-in (the dev
issuer over HTTP): who sees what, who may answer, and every attack on it refused and audited."""

from __future__ import annotations

import asyncio
import base64
import json
from html.parser import HTMLParser
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from caduceus_approval.web.sessions import SESSION_COOKIE
from caduceus_contracts import ApprovalAnswered, ApprovalRefused, ApprovalTerms, ErrorEvent, parse_event, subjects

from .conftest import TENANT, approval_stack, wait_until

pytestmark = pytest.mark.timeout(120)


async def sign_in(approval, who: str) -> httpx.AsyncClient:
    """A browser-like client signed in as `who` (tenant/user) through the provider's sign-in page."""
    browser = httpx.AsyncClient(base_url=approval.ui_url, follow_redirects=False, timeout=10)
    to_provider = await browser.get("/login", params={"next": "/"})
    assert to_provider.status_code == 303
    authorize = to_provider.headers["location"]
    assert authorize.startswith(f"{approval.issuer_url}/authorize?")
    async with httpx.AsyncClient(timeout=10) as provider:
        listing = await provider.get(authorize)
        assert "Development only" in listing.text and "carol@acme" in listing.text
        back = await provider.post(f"{approval.issuer_url}/authorize",
                                   data={**dict(parse_qsl(urlsplit(authorize).query)), "who": who})
    assert back.status_code == 303
    landed = await browser.get(back.headers["location"])
    assert (landed.status_code, landed.headers["location"]) == (303, "/")
    return browser


async def opened(approval, bus, **kwargs):
    asked = approval.ask(**kwargs)
    await asked.publish(bus.conn)
    await wait_until(lambda: approval.service.inbox.get(TENANT, asked.call_id) is not None)
    return asked


def csrf_of(page: str) -> str:
    return page.split('name="csrf" value="', 1)[1].split('"', 1)[0]


async def refusals(bus, call_id: str, count: int) -> list[ApprovalRefused]:
    await wait_until(lambda: len([e for e in bus.approvals if isinstance(e, ApprovalRefused)
                                  and e.call_id == call_id]) >= count)
    return [e for e in bus.approvals if isinstance(e, ApprovalRefused) and e.call_id == call_id]


async def test_nothing_is_reachable_without_signing_in(approval, bus) -> None:
    asked = await opened(approval, bus)
    async with httpx.AsyncClient(base_url=approval.ui_url, follow_redirects=False) as anonymous:
        for path in ("/", "/history", f"/approvals/{asked.call_id}"):
            response = await anonymous.get(path)
            assert response.status_code == 303 and response.headers["location"].startswith("/login?next=")
        for path in ("/inbox", "/events", "/api/approvals", f"/api/approvals/{asked.call_id}"):
            assert (await anonymous.get(path)).status_code == 401
        posted = await anonymous.post(f"/approvals/{asked.call_id}", data={"answer": "approve", "digest": asked.digest})
        assert posted.status_code == 303
        assert (await anonymous.post(f"/api/approvals/{asked.call_id}/approve", json={"digest": asked.digest})
                ).status_code == 401
        assert (await anonymous.get("/healthz")).text == "ok"
    assert approval.service.inbox.get(TENANT, asked.call_id).status == "pending"


async def test_inbox_shows_the_request_to_its_approvers_only(approval, bus) -> None:
    asked = await opened(approval, bus)
    carol = await sign_in(approval, "acme/carol")
    inbox = await carol.get("/")
    assert asked.call_id in inbox.text and "asked by alice" in inbox.text
    detail = await carol.get(f"/approvals/{asked.call_id}")
    assert "rm -rf build" in detail.text and "please clean up the build directory" in detail.text
    assert 'class="risky"' in detail.text and "destructive" in detail.text
    assert "min left" in detail.text and asked.digest in detail.text

    for who in ("acme/bob", "globex/gina"):  # not on the panel; another tenant
        other = await sign_in(approval, who)
        assert asked.call_id not in (await other.get("/")).text
        assert (await other.get(f"/approvals/{asked.call_id}")).status_code == 404
        assert asked.call_id not in (await other.get("/inbox")).text


async def test_approving_in_the_ui_allows_the_call(approval, bus) -> None:
    asked = await opened(approval, bus)
    carol = await sign_in(approval, "acme/carol")
    page = (await carol.get(f"/approvals/{asked.call_id}")).text
    answered = await carol.post(f"/approvals/{asked.call_id}", data={
        "csrf": csrf_of(page), "digest": asked.digest, "answer": "approve", "comment": "ok, build is scratch"})
    assert answered.status_code == 303
    decision = (await bus.verdict_on(asked.call_id)).decision.decision
    assert (decision.verdict, decision.reason) == ("allow", "approved by carol (carol: ok, build is scratch)")
    await wait_until(lambda: approval.service.inbox.get(TENANT, asked.call_id).status == "approved")
    assert asked.call_id in (await carol.get("/history")).text
    assert asked.call_id not in (await carol.get("/inbox")).text


async def test_a_form_without_the_session_csrf_token_is_refused_and_audited(approval, bus) -> None:
    asked = await opened(approval, bus)
    carol = await sign_in(approval, "acme/carol")
    forged = await carol.post(f"/approvals/{asked.call_id}", data={"csrf": "x", "digest": asked.digest,
                                                                    "answer": "approve"})
    assert forged.status_code == 403
    refused = await refusals(bus, asked.call_id, 1)
    assert "CSRF" in refused[0].reason and refused[0].approver == "carol"
    assert approval.service.inbox.get(TENANT, asked.call_id).status == "pending"


async def test_a_forged_session_cookie_is_refused_and_audited(approval, bus) -> None:
    errors: asyncio.Queue[ErrorEvent] = asyncio.Queue()

    async def on_error(msg) -> None:
        await errors.put(parse_event(msg.data, expect=ErrorEvent))

    # A forged cookie names no tenant anyone vouches for: its audit record is under the system tenant.
    subscription = await bus.conn.subscribe(subjects.error(subjects.SYSTEM_TENANT, "approval"), on_error)
    carol = await sign_in(approval, "acme/carol")
    _, _, signature = carol.cookies[SESSION_COOKIE].partition(".")
    claim = base64.urlsafe_b64encode(json.dumps({"tenant": "acme", "user": "dave", "csrf": "x"}).encode())
    async with httpx.AsyncClient(base_url=approval.ui_url, follow_redirects=False) as mallory:
        mallory.cookies.set(SESSION_COOKIE, claim.decode().rstrip("=") + "." + signature)
        response = await mallory.get("/")
    assert response.status_code == 303 and response.headers["location"].startswith("/login")
    error = await asyncio.wait_for(errors.get(), 10)
    assert "forged session cookie" in error.reason
    await subscription.unsubscribe()


async def test_the_api_refuses_every_answer_that_must_not_count_with_a_reason(approval, bus) -> None:
    asked = await opened(approval, bus, terms=ApprovalTerms(groups=("admin",), users=("alice",), timeout_s=600))
    api = httpx.AsyncClient(base_url=approval.ui_url, timeout=10)

    async def answer(user: str, tenant: str = TENANT, digest: str = asked.digest, verdict: str = "approve"):
        return await api.post(f"/api/approvals/{asked.call_id}/{verdict}", json={"digest": digest},
                              headers={"Authorization": f"Bearer {approval.token(user, tenant)}"})

    own = await answer("alice")
    assert own.status_code == 409 and "separation of duties" in own.json()["error"]
    assert "bob is not one of the approvers" in (await answer("bob")).json()["error"]
    assert "no approval" in (await answer("gina", "globex")).json()["error"]
    wrong = await answer("carol", digest="0" * 64)
    assert wrong.status_code == 409 and "approve exactly the call you reviewed" in wrong.json()["error"]
    bad_token = await api.post(f"/api/approvals/{asked.call_id}/approve", json={"digest": asked.digest},
                               headers={"Authorization": "Bearer not-a-token"})
    assert bad_token.status_code == 401
    assert approval.service.inbox.get(TENANT, asked.call_id).status == "pending"

    assert (await answer("carol")).json()["approval"]["status"] == "approved"
    twice = await answer("dave")
    assert twice.status_code == 409 and "already been decided" in twice.json()["error"]
    # gina's refusal is audited in her own tenant (globex); the four in acme:
    reasons = [r.reason for r in await refusals(bus, asked.call_id, 4)]
    assert any("separation of duties" in r for r in reasons) and any("already been decided" in r for r in reasons)
    assert any("approve exactly the call you reviewed" in r for r in reasons)
    await api.aclose()


async def test_an_approver_can_answer_from_a_chat_integration(approval, bus) -> None:
    asked = await opened(approval, bus)
    forged = ApprovalAnswered(tenant=TENANT, call_id=asked.call_id, digest=asked.digest, answer="approve",
                              channel="slack", token="eyJhbGciOiJub25lIn0.eyJzdWIiOiJjYXJvbCJ9.")
    await bus.conn.publish(subjects.approval("answered", TENANT), forged)
    refused = await refusals(bus, asked.call_id, 1)
    assert "token was refused" in refused[0].reason
    genuine = ApprovalAnswered(tenant=TENANT, call_id=asked.call_id, digest=asked.digest, answer="deny",
                               comment="not from chat", channel="slack", token=approval.token("carol"))
    await bus.conn.publish(subjects.approval("answered", TENANT), genuine)
    decision = (await bus.verdict_on(asked.call_id)).decision.decision
    assert (decision.verdict, decision.reason) == ("deny", "denied by carol: not from chat")


async def test_the_event_stream_announces_a_new_request_live(approval, bus) -> None:
    carol = await sign_in(approval, "acme/carol")
    async with carol.stream("GET", "/events", timeout=httpx.Timeout(20)) as stream:
        lines = stream.aiter_lines()
        assert (await anext(lines)).startswith(": connected")
        asked = approval.ask()
        await asked.publish(bus.conn)
        async with asyncio.timeout(15):
            async for line in lines:
                if line.startswith("data:") and asked.call_id in line:
                    break
    assert asked.call_id in (await carol.get("/inbox")).text


async def test_a_call_nobody_may_approve_is_denied_at_once(approval, bus) -> None:
    asked = approval.ask(terms=ApprovalTerms(groups=("auditor",), timeout_s=600))
    await asked.publish(bus.conn)
    decision = (await bus.verdict_on(asked.call_id)).decision.decision
    assert decision.verdict == "deny" and "only 0 may answer" in decision.reason


async def test_secrets_in_the_arguments_are_never_shown(approval, bus) -> None:
    asked = await opened(approval, bus, command="rm -f old.env && echo password=hunter2 > .env")
    carol = await sign_in(approval, "acme/carol")
    page = (await carol.get(f"/approvals/{asked.call_id}")).text
    async with httpx.AsyncClient(base_url=approval.ui_url) as api:
        shown = await api.get(f"/api/approvals/{asked.call_id}",
                              headers={"Authorization": f"Bearer {approval.token('carol')}"})
    assert "rm -f old.env" in page and "rm -f old.env" in shown.text
    assert "hunter2" not in page and "hunter2" not in shown.text and "REDACTED" in shown.text


# --- the security headers: every response, and pages that need nothing inline ------------------------------

class InlineCode(HTMLParser):
    """The page's real elements (not text that looks like them) that need 'unsafe-inline' or change where the
    page points: inline scripts, style elements and attributes, event handlers, <base>, <meta http-equiv>."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.found: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if (tag == "script" and "src" not in names) or tag in ("style", "base") or \
                (tag == "meta" and "http-equiv" in names):
            self.found.append(f"<{tag}>")
        self.found += [f"<{tag} {name}=>" for name in names if name == "style" or name.startswith("on")]
        self.found += [f"<{tag} {name}={value}>" for name, value in attrs
                       if value and value.strip().lower().startswith("javascript:")]


def assert_locked_down(response: httpx.Response, what: str) -> None:
    """The headers that keep an injected script from running and other sites from framing or sniffing a page."""
    csp = response.headers.get("content-security-policy")
    assert csp, f"{what}: no Content-Security-Policy"
    directives = {name: value for name, _, value in (d.strip().partition(" ") for d in csp.split(";")) if name}
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "*" not in csp, (what, csp)
    assert directives["default-src"] == "'none'", (what, csp)
    assert directives["script-src"] in ("'self'", "'none'") and directives["style-src"] == "'self'", (what, csp)
    assert directives["object-src"] == "'none'" and directives["base-uri"] == "'none'", (what, csp)
    assert directives["frame-ancestors"] == "'none'" and directives["form-action"] == "'self'", (what, csp)
    assert response.headers.get("x-content-type-options") == "nosniff", what
    assert response.headers.get("referrer-policy") in ("no-referrer", "same-origin"), what
    assert response.headers.get("x-frame-options") == "DENY", what
    if "text/html" in response.headers.get("content-type", ""):
        assert InlineCode(response.text).found == [], what


async def test_every_response_of_the_ui_carries_a_strict_csp_and_the_security_headers(approval, bus) -> None:
    asked = await opened(approval, bus)
    async with httpx.AsyncClient(base_url=approval.ui_url, follow_redirects=False, timeout=10) as anonymous:
        assert_locked_down(await anonymous.get("/login", params={"next": "/"}), "sign-in redirect")
        expired = await anonymous.get("/auth/callback", params={"state": "x", "code": "y"})
        assert expired.status_code == 400 and "Sign-in expired" in expired.text
        assert_locked_down(expired, "sign-in error page")
        assert_locked_down(await anonymous.get("/"), "signed-out inbox")
        assert_locked_down(await anonymous.get("/inbox"), "signed-out rows")
        assert_locked_down(await anonymous.get("/api/approvals"), "API without a token")
        assert_locked_down(await anonymous.get("/healthz"), "health")
        assert_locked_down(await anonymous.get("/no/such/page"), "unknown path")

    carol = await sign_in(approval, "acme/carol")
    inbox = await carol.get("/")
    assert asked.call_id in inbox.text and '<script src="/static/inbox.js"></script>' in inbox.text
    assert_locked_down(inbox, "inbox")
    assert_locked_down(await carol.get("/inbox"), "inbox rows")
    assert_locked_down(await carol.get("/history"), "history")
    detail = await carol.get(f"/approvals/{asked.call_id}")
    assert "rm -rf build" in detail.text and f'data-call-id="{asked.call_id}"' in detail.text
    assert_locked_down(detail, "a call's page")
    missing = await carol.get("/approvals/no-such-call")
    assert missing.status_code == 404 and "No such approval" in missing.text
    assert_locked_down(missing, "404 page")
    refused = await carol.post(f"/approvals/{asked.call_id}", data={"csrf": "x", "answer": "approve"})
    assert refused.status_code == 403
    assert_locked_down(refused, "refused form")
    async with carol.stream("GET", "/events", timeout=httpx.Timeout(10)) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert_locked_down(stream, "event stream")
    bob = await sign_in(approval, "acme/bob")
    not_admin = await bob.get("/usage")
    assert not_admin.status_code == 403 and "Usage is for admins" in not_admin.text
    assert_locked_down(not_admin, "usage for a member")
    assert "script-src 'none'" in not_admin.headers["content-security-policy"]  # the usage pages run no script
    logout = await carol.post("/logout", data={"csrf": csrf_of(inbox.text)})
    assert logout.status_code == 200 and "Signed out" in logout.text
    assert_locked_down(logout, "signed-out page")

    # The files the pages use instead of inline code: served as what they are, never sniffed as something else.
    for path, kind in (("/static/inbox.js", "javascript"), ("/static/detail.js", "javascript"),
                       ("/static/approvals.css", "text/css")):
        asset = await carol.get(path)
        assert asset.status_code == 200 and kind in asset.headers["content-type"], path
        assert_locked_down(asset, path)
    await carol.aclose()
    await bob.aclose()


async def test_a_route_that_fails_still_answers_with_the_security_headers() -> None:
    """The headers wrap the whole app: a 500 (here a route that raises) is no hole in them."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.routing import Route

    from caduceus_approval.web.routes import SecurityHeaders

    async def broken(request):
        raise RuntimeError("boom")

    app = Starlette(routes=[Route("/", broken)], middleware=[Middleware(SecurityHeaders)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                 base_url="http://ui") as client:
        response = await client.get("/")
    assert response.status_code == 500 and "Something went wrong" in response.text
    assert_locked_down(response, "500 page")


async def test_cookies_are_secure_httponly_and_same_site_behind_https(tmp_path, nats_server, temporal_server) -> None:
    async with approval_stack(tmp_path, nats_server.url, temporal_server.address, wait_for_temporal=False,
                              ui_public_url="https://approvals.example") as behind_tls:
        port = behind_tls.service.settings.ui_port
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", follow_redirects=False) as browser:
            started = await browser.get("/login", params={"next": "/"})
            signed_out = await browser.post("/logout")
    login_cookie = started.headers["set-cookie"].lower()
    assert started.status_code == 303 and started.headers["location"].startswith(behind_tls.issuer_url)
    assert "; secure" in login_cookie and "; httponly" in login_cookie and "samesite=lax" in login_cookie
    expired = signed_out.headers["set-cookie"].lower()
    assert SESSION_COOKIE.lower() in expired and "; secure" in expired and "; httponly" in expired


HOSTILE = ('<script>alert(1)</script>', '"><img src=x onerror=alert(2)>', "'><svg onload=alert(3)>",
           '</textarea><style>body{display:none}</style>', '<a href="javascript:alert(4)" style="x">x</a>',
           '<base href="//evil.example/">', '<meta http-equiv="refresh" content="0;url=//evil.example">')


async def test_hostile_arguments_and_messages_reach_no_page_as_markup(approval, bus) -> None:
    """A requester who puts markup in the command or the conversation gets none of it into the approver's pages:
    it is shown as text (and, were an escape ever missed, the CSP would still refuse to run it)."""
    payload = " ".join(HOSTILE)
    asked = await opened(approval, bus, command=f"echo {payload}", text=f"please {payload}")
    carol = await sign_in(approval, "acme/carol")
    pages = {"inbox": await carol.get("/"), "rows": await carol.get("/inbox"),
             "detail": await carol.get(f"/approvals/{asked.call_id}")}
    assert asked.call_id in pages["rows"].text
    for what, page in pages.items():
        assert_locked_down(page, what)
        for hostile in HOSTILE:
            assert hostile not in page.text, (what, hostile)
        assert "<base" not in page.text and "<meta http-equiv" not in page.text, what
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages["detail"].text
    await carol.aclose()
