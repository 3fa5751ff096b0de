"""The web chat: sign in with the tenant's OIDC provider, pick a workspace, talk to the agent with each turn's tool
calls, decisions and notices streamed as they happen (SSE), resume earlier conversations, and, for an approver,
answer the calls waiting for them.

Nothing but /healthz, /login and the sign-in callback answers without a signed-in person; a conversation is
only ever looked up together with its owner, so another person's conversation is "not found", by link or by
guess. Every state-changing request carries the session's CSRF token; every page is sent with a strict content
security policy (no inline script or style) and everything shown is escaped (Jinja autoescape, and `textContent`
in the page's script).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from caduceus_client import ApprovalsClient, ApprovalsError
from caduceus_contracts import new_id
from caduceus_gateway.relay import GatewayStopping, Relay
from caduceus_gateway.store import ConversationStore
from caduceus_gateway.transcript import shown_entries
from caduceus_gateway.web.sessions import LOGIN_COOKIE, SESSION_COOKIE, CookieJar, ForgedCookie, SignedIn
from caduceus_oidc import OidcClient, Refused, SignInFailed, VerifiedIdentity, pkce_pair
from caduceus_web import until_stopped

HERE = Path(__file__).parent
KEEPALIVE_S = 15.0
MAX_TEXT = 20_000
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}

log = logging.getLogger(__name__)


@dataclass
class WebContext:
    """What the web chat needs: the relay and store, sign-in, who has which workspaces, the approvals API, and
    when its event streams end (the gateway stopping)."""

    relay: Relay
    store: ConversationStore
    cookies: CookieJar
    oidc: OidcClient | None
    workspaces: Callable[[str], tuple[str, ...]]  # a tenant's workspaces (empty: unknown tenant)
    member: Callable[[VerifiedIdentity], str]  # the directory's name for a person, or Refused saying why not
    # (person, conversation, workspace, text); GatewayStopping when the gateway takes no new turn
    start_turn: Callable[[SignedIn, str, str, str], Awaitable[None]]
    audit_refusal: Callable[[str, str], Awaitable[None]]  # (where, reason): an audited error event
    approvals_url: str | None = None
    secure_cookies: bool = False
    streams_end: asyncio.Event = field(default_factory=asyncio.Event)


class SecurityHeaders:
    """Every response gets the security headers (plain ASGI, so the event stream is not buffered)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if not static:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, with_headers)


def _safe_next(path: str | None) -> str:
    """Only a path on this site: never redirect a person elsewhere after sign-in."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path or urlsplit(path).netloc:
        return "/"
    return path


def build_app(web: WebContext) -> Starlette:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
    env.filters["when"] = lambda at: at.strftime("%Y-%m-%d %H:%M UTC") if at else ""
    env.filters["pretty"] = lambda value: json.dumps(value, ensure_ascii=False, indent=1)

    def page(name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(**context), status_code=status_code)

    async def signed_in(request: Request) -> SignedIn | None:
        """The person of a valid session cookie who is still in the tenants file; a forged cookie is audited."""
        try:
            session = web.cookies.signed_in(request.cookies.get(SESSION_COOKIE))
        except ForgedCookie as exc:
            await web.audit_refusal(f"http:{request.method}:{request.url.path}"[:200],
                                    f"web chat refused a forged session cookie: {exc}")
            return None
        if session is None:
            return None
        try:  # removed from the tenant: their session ends now, not when the cookie expires
            web.member(VerifiedIdentity(subject=session.user, tenant=session.tenant, groups=session.groups,
                                        email=None, issuer="web chat session", expires_at=None))
        except Refused:
            return None
        return session

    def to_login(request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response = RedirectResponse(f"/login?next={quote(target)}", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    async def csrf_refused(request: Request, session: SignedIn, token: str | None) -> Response | None:
        if session.csrf_ok(token):
            return None
        await web.audit_refusal(f"http:{request.method}:{request.url.path}"[:200],
                                f"web chat refused a request from {session.user}@{session.tenant} without this "
                                "session's CSRF token (cross-site request?)")
        return JSONResponse({"error": "the request did not carry this page's CSRF token; reload the page"},
                            status_code=403)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    # --- sign-in -----------------------------------------------------------------------------------------

    async def login(request: Request) -> Response:
        if web.oidc is None:
            return page("message.html", 503, title="Sign-in is not configured",
                        text="Set CADUCEUS_OIDC_ISSUER_URL (and the client id and secret) for the gateway.")
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        verifier, challenge = pkce_pair()
        try:
            url = await web.oidc.authorization_url(state, nonce, challenge)
        except SignInFailed as exc:
            return page("message.html", 502, title="Sign-in is unavailable", text=str(exc))
        response = RedirectResponse(url, status_code=303)
        response.set_cookie(LOGIN_COOKIE, web.cookies.login(state, nonce, verifier,
                                                             _safe_next(request.query_params.get("next"))),
                            max_age=600, httponly=True, samesite="lax", secure=web.secure_cookies)
        return response

    async def callback(request: Request) -> Response:
        pending = web.cookies.pending_login(request.cookies.get(LOGIN_COOKIE))
        state = request.query_params.get("state", "")
        if pending is None or not secrets.compare_digest(pending["state"], state):
            return page("message.html", 400, title="Sign-in expired",
                        text="This sign-in was started elsewhere or too long ago.", link=("/login", "Sign in again"))
        if "error" in request.query_params or "code" not in request.query_params:
            return page("message.html", 400, title="Sign-in failed",
                        text=f"The provider said: {request.query_params.get('error', 'no code')}",
                        link=("/login", "Sign in again"))
        assert web.oidc is not None
        try:
            identity, token = await web.oidc.sign_in_with_token(request.query_params["code"], pending["verifier"],
                                                                 pending["nonce"])
        except SignInFailed as exc:
            return page("message.html", 401, title="Sign-in failed", text=str(exc), link=("/login", "Sign in again"))
        try:
            name = web.member(identity)
        except Refused as refused:
            return page("message.html", 403, title="Not a member here", text=refused.reply_text,
                        link=("/login", "Sign in as someone else"))
        cookie, max_age = web.cookies.session(identity.tenant, name, token,
                                              identity.expires_at.timestamp() if identity.expires_at else None,
                                              identity.groups)
        response = RedirectResponse(pending["next"], status_code=303)
        response.set_cookie(SESSION_COOKIE, cookie, max_age=max_age, httponly=True, samesite="lax",
                            secure=web.secure_cookies)
        response.delete_cookie(LOGIN_COOKIE)
        return response

    async def logout(request: Request) -> Response:
        session = await signed_in(request)
        form = await request.form()
        if session is not None and not session.csrf_ok(str(form.get("csrf", ""))):
            return page("message.html", 403, title="Not signed out", text="The form was not from this site.")
        response = page("message.html", title="Signed out", text="You are signed out.", link=("/login", "Sign in"))
        response.delete_cookie(SESSION_COOKIE)
        return response

    # --- pages -------------------------------------------------------------------------------------------

    def chat_page(session: SignedIn, conversation=None, status_code: int = 200) -> Response:
        entries = shown_entries(web.store.entries(conversation)) if conversation is not None else []
        return page("chat.html", status_code, session=session, conversation=conversation, entries=entries,
                    conversations=web.store.of_person(session.tenant, session.user),
                    workspaces=web.workspaces(session.tenant), approvals=bool(web.approvals_url))

    async def home(request: Request) -> Response:
        session = await signed_in(request)
        if session is None:
            return to_login(request)
        return chat_page(session)

    async def new_conversation(request: Request) -> Response:
        session = await signed_in(request)
        if session is None:
            return to_login(request)
        form = await request.form()
        if (refused := await csrf_refused(request, session, str(form.get("csrf", "")))) is not None:
            return refused
        workspace = str(form.get("workspace", ""))
        if workspace not in web.workspaces(session.tenant):
            return page("message.html", 400, session=session, title="No such workspace",
                        text=f"Choose one of {', '.join(web.workspaces(session.tenant))}.", link=("/", "Back"))
        conversation = web.store.start(f"w-{new_id()[:24]}", session.tenant, session.user, workspace,
                                       session.channel, "New conversation")
        return RedirectResponse(f"/c/{quote(conversation.conversation_id)}", status_code=303)

    async def conversation_page(request: Request) -> Response:
        session = await signed_in(request)
        if session is None:
            return to_login(request)
        conversation = web.store.get(request.path_params["cid"], session.tenant, session.user)
        if conversation is None:
            return page("message.html", 404, session=session, title="No such conversation",
                        text="There is no conversation with this id that is yours.", link=("/", "Back to chat"))
        return chat_page(session, conversation)

    async def post_message(request: Request) -> Response:
        session = await signed_in(request)
        if session is None:
            return JSONResponse({"error": "sign in first"}, status_code=401)
        as_json = request.headers.get("content-type", "").startswith("application/json")
        if as_json:
            try:
                body = await request.json()
            except ValueError:
                body = None
            body = body if isinstance(body, dict) else {}
            token, text = request.headers.get("x-csrf-token"), body.get("text")
        else:
            form = await request.form()
            token, text = str(form.get("csrf", "")), form.get("text")
        if (refused := await csrf_refused(request, session, token)) is not None:
            return refused
        conversation = web.store.get(request.path_params["cid"], session.tenant, session.user)
        if conversation is None:
            return JSONResponse({"error": "no such conversation of yours"}, status_code=404)
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
            return JSONResponse({"error": f"write a message (at most {MAX_TEXT} characters)"}, status_code=400)
        try:
            await web.start_turn(session, conversation.conversation_id, conversation.workspace, text)
        except GatewayStopping as exc:
            if as_json:
                return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "5"})
            return page("message.html", 503, session=session, title="Not sent", text=str(exc),
                        link=(f"/c/{quote(conversation.conversation_id)}", "Back to the conversation"))
        if as_json:
            return JSONResponse({"accepted": True}, status_code=202)
        return RedirectResponse(f"/c/{quote(conversation.conversation_id)}", status_code=303)

    async def events(request: Request) -> Response:
        session = await signed_in(request)
        if session is None:
            return PlainTextResponse("sign in first", status_code=401)
        conversation = web.store.get(request.path_params["cid"], session.tenant, session.user)
        if conversation is None:
            return PlainTextResponse("no such conversation of yours", status_code=404)

        async def stream():
            with web.relay.listen(session.tenant, conversation.conversation_id) as updates:
                yield ": connected\n\n"
                async for update in until_stopped(updates, web.streams_end, keepalive_s=KEEPALIVE_S):
                    if update is None:
                        yield ": keepalive\n\n"
                        continue
                    yield f"event: update\ndata: {json.dumps(update.as_json(), ensure_ascii=False)}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # --- approvals waiting for the signed-in person (through the approval service's desk) ---------------------

    async def approvals_list(request: Request) -> Response:
        session = await signed_in(request)
        if session is None:
            return JSONResponse({"error": "sign in first"}, status_code=401)
        if web.approvals_url is None:
            return JSONResponse({"approvals": []})
        try:
            async with ApprovalsClient(web.approvals_url, session.token) as api:
                views = await api.pending()
        except ApprovalsError as exc:
            return JSONResponse({"error": str(exc)}, status_code=502 if exc.status is None else exc.status)
        return JSONResponse({"approvals": [
            {"call_id": v.call_id, "tool": v.tool, "args": v.args, "digest": v.digest, "requester": v.requester,
             "reason": v.reason, "workspace": v.workspace, "expires_at": v.expires_at.isoformat(),
             "votes": len(v.votes), "quorum": v.quorum} for v in views]})

    async def approvals_answer(request: Request) -> Response:
        session = await signed_in(request)
        if session is None:
            return JSONResponse({"error": "sign in first"}, status_code=401)
        if (refused := await csrf_refused(request, session, request.headers.get("x-csrf-token"))) is not None:
            return refused
        answer = request.path_params["answer"]
        if answer not in ("approve", "deny") or web.approvals_url is None:
            return JSONResponse({"error": "POST to /api/approvals/<call id>/approve or .../deny"}, status_code=404)
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("digest"), str):
            return JSONResponse({"error": 'send JSON {"digest": "<the call digest shown>"}'}, status_code=400)
        try:
            async with ApprovalsClient(web.approvals_url, session.token) as api:
                view = await api.answer(request.path_params["call_id"], answer, digest=body["digest"],
                                        comment=str(body.get("comment", ""))[:2000], channel="web-chat")
        except ApprovalsError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409 if exc.status == 409 else 502)
        return JSONResponse({"call_id": view.call_id, "status": view.status, "resolution": view.resolution})

    return Starlette(routes=[
        Route("/healthz", healthz),
        Route("/login", login),
        Route("/auth/callback", callback),
        Route("/logout", logout, methods=["POST"]),
        Route("/", home),
        Route("/c", new_conversation, methods=["POST"]),
        Route("/c/{cid}", conversation_page),
        Route("/c/{cid}/messages", post_message, methods=["POST"]),
        Route("/c/{cid}/events", events),
        Route("/api/approvals", approvals_list),
        Route("/api/approvals/{call_id}/{answer}", approvals_answer, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ], middleware=[Middleware(SecurityHeaders)])
