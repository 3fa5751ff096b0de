"""The approver web UI (server-rendered HTML, a little progressive JavaScript) and the JSON API the CLI,
the demo and scripts use. Both take the same path to an answer: a verified person, then the desk.

Every response carries a strict Content-Security-Policy and the other security headers (`SecurityHeaders`): the
pages' script and style are files under /static, never inline, so an injected `<script>` or `onerror=` cannot run.

Nothing but /healthz answers without a signed-in person; every page and API call sees only the
person's own tenant, and only approvals they are on the panel of.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass, field
from datetime import datetime
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

from caduceus_approval.desk import AnswerRefused, ApprovalDesk
from caduceus_approval.directory import TenantDirectory
from caduceus_approval.domain import human_duration, who_may_not_answer
from caduceus_approval.inbox import Inbox, Person, visible_to
from caduceus_approval.usage import (
    DIMENSIONS,
    AuditUsage,
    DayUsage,
    UsageUnavailable,
    UsageWindow,
    by_day,
    totals,
)
from caduceus_approval.web.chart import usage_chart
from caduceus_approval.web.sessions import LOGIN_COOKIE, SESSION_COOKIE, CookieJar, ForgedCookie, SignedIn
from caduceus_bus import Publisher
from caduceus_contracts import ApprovalView, UsageDimension, UsageTotals, utcnow
from caduceus_oidc import OidcClient, OidcVerifier, SignInFailed, TokenRefused, pkce_pair
from caduceus_redaction import redact_value
from caduceus_web import until_stopped

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
KEEPALIVE_S = 15.0
# Nothing but this site's own files: script and style only from /static (no 'unsafe-inline', no eval), fetch and
# the event stream only to this site, no plugins, no <base>, forms only post here, and no other site may frame
# a page (clickjacking an Approve button).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "object-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
# The usage page needs no script at all: its chart is server-rendered SVG.
USAGE_CSP = ("default-src 'none'; script-src 'none'; style-src 'self'; img-src 'self'; connect-src 'none'; "
             "object-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
ERROR_PAGE = (b"<!doctype html><title>Something went wrong \xc2\xb7 Caduceus</title>"
              b"<p>Something went wrong in the approvals UI; it is logged. Try again in a moment.</p>")


class SecurityHeaders:
    """Every response gets the security headers, a route's own CSP kept (plain ASGI, so the event stream is not
    buffered). A route that raises still answers with them: a plain 500 page, the exception passed on to be
    logged."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")
        started = False

        async def with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if not static:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        try:
            await self.app(scope, receive, with_headers)
        except Exception:
            if not started:
                await with_headers({"type": "http.response.start", "status": 500,
                                    "headers": [(b"content-type", b"text/html; charset=utf-8"),
                                                (b"content-length", str(len(ERROR_PAGE)).encode())]})
                await send({"type": "http.response.body", "body": ERROR_PAGE})
            raise


@dataclass
class UiContext:
    """What the UI needs: the inbox and desk, who may sign in, how, where Temporal's Web UI is, and when its live
    streams end (the service stopping)."""

    inbox: Inbox
    desk: ApprovalDesk
    directory: TenantDirectory
    cookies: CookieJar
    oidc: OidcClient | None
    api_verifier: OidcVerifier
    publisher: Publisher
    secure_cookies: bool = False
    temporal_ui_url: str | None = None
    temporal_namespace: str = "default"
    usage: AuditUsage | None = None
    streams_end: asyncio.Event = field(default_factory=asyncio.Event)


def _time_left(expires_at: datetime) -> str:
    left = (expires_at - utcnow()).total_seconds()
    return "expired" if left <= 0 else f"{human_duration(left)} left"


def _shown(value: Any) -> str:
    value = redact_value(value)
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=1)


def _public(view: ApprovalView) -> dict[str, Any]:
    """The view as the API shows it: secrets in the arguments redacted, like everywhere people look."""
    return view.model_copy(update={"args": redact_value(view.args)}).model_dump(mode="json")


def _safe_next(path: str | None) -> str:
    """Only a path on this site: never redirect a person elsewhere after sign-in."""
    if not path or not path.startswith("/") or path.startswith("//") or urlsplit(path).netloc:
        return "/"
    return path


def build_app(ui: UiContext) -> Starlette:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
    env.filters["time_left"] = _time_left
    env.filters["shown"] = _shown
    env.filters["when"] = lambda at: at.strftime("%Y-%m-%d %H:%M:%S UTC") if at else ""
    env.globals["is_admin"] = lambda session: ui.directory.is_admin(session.tenant, session.user)

    def page(name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(**context), status_code=status_code)

    def forget(response: Response, cookie: str) -> None:
        """Expire a cookie with the flags it was set with (HttpOnly, SameSite=Lax, Secure over https)."""
        response.delete_cookie(cookie, httponly=True, samesite="lax", secure=ui.secure_cookies)

    async def audit_forgery(request: Request, reason: str) -> None:
        await ui.publisher.refuse(f"http:{request.method}:{request.url.path}"[:200], b"", reason)

    async def signed_in(request: Request) -> SignedIn | None:
        """The person of a valid session cookie who is still in the tenants file; a forged cookie is audited."""
        try:
            session = ui.cookies.signed_in(request.cookies.get(SESSION_COOKIE))
        except ForgedCookie as exc:
            await audit_forgery(request, f"approvals UI refused a forged session cookie: {exc}")
            return None
        if session is None or not ui.directory.is_member(session.tenant, session.user):
            return None
        return session

    def to_login(request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response = RedirectResponse(f"/login?next={quote(target)}", status_code=303)
        forget(response, SESSION_COOKIE)
        return response

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    # --- sign-in -----------------------------------------------------------------------------------------

    async def login(request: Request) -> Response:
        if ui.oidc is None:
            return page("message.html", 503, title="Sign-in is not configured",
                        text="Set CADUCEUS_OIDC_ISSUER_URL (and the client id and secret) for the approval service.")
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        verifier, challenge = pkce_pair()
        try:
            url = await ui.oidc.authorization_url(state, nonce, challenge)
        except SignInFailed as exc:
            return page("message.html", 502, title="Sign-in is unavailable", text=str(exc))
        response = RedirectResponse(url, status_code=303)
        response.set_cookie(LOGIN_COOKIE, ui.cookies.login(state, nonce, verifier,
                                                            _safe_next(request.query_params.get("next"))),
                            max_age=600, httponly=True, samesite="lax", secure=ui.secure_cookies)
        return response

    async def callback(request: Request) -> Response:
        pending = ui.cookies.pending_login(request.cookies.get(LOGIN_COOKIE))
        state = request.query_params.get("state", "")
        if pending is None or not secrets.compare_digest(pending["state"], state):
            return page("message.html", 400, title="Sign-in expired",
                        text="This sign-in was started elsewhere or too long ago.", link=("/login", "Sign in again"))
        if "error" in request.query_params or "code" not in request.query_params:
            return page("message.html", 400, title="Sign-in failed",
                        text=f"The provider said: {request.query_params.get('error', 'no code')}",
                        link=("/login", "Sign in again"))
        assert ui.oidc is not None
        try:
            identity = await ui.oidc.sign_in(request.query_params["code"], pending["verifier"], pending["nonce"])
        except SignInFailed as exc:
            return page("message.html", 401, title="Sign-in failed", text=str(exc), link=("/login", "Sign in again"))
        if not ui.directory.is_member(identity.tenant, identity.subject):
            return page("message.html", 403, title="Not an approver here",
                        text=f"{identity.subject} is not a user of tenant {identity.tenant} in the tenants file.")
        response = RedirectResponse(pending["next"], status_code=303)
        response.set_cookie(SESSION_COOKIE, ui.cookies.session(identity.tenant, identity.subject),
                            max_age=int(ui.cookies.session_ttl_s), httponly=True, samesite="lax",
                            secure=ui.secure_cookies)
        forget(response, LOGIN_COOKIE)
        return response

    async def logout(request: Request) -> Response:
        session = await signed_in(request)
        form = await request.form()
        if session is not None and not session.csrf_ok(form.get("csrf")):
            return page("message.html", 403, title="Not signed out", text="The form was not from this site.")
        response = page("message.html", title="Signed out", text="You are signed out.", link=("/login", "Sign in"))
        forget(response, SESSION_COOKIE)
        return response

    # --- pages -------------------------------------------------------------------------------------------

    def person_of(session: SignedIn) -> Person:
        return Person(session.tenant, session.user)

    async def inbox_page(request: Request) -> Response:
        session = await signed_in(request)
        if session is None:
            return to_login(request)
        return page("inbox.html", session=session, approvals=ui.inbox.pending_for(person_of(session)))

    async def inbox_rows(request: Request) -> Response:
        session = await signed_in(request)
        if session is None:
            return PlainTextResponse("sign in first", status_code=401)
        return page("_rows.html", approvals=ui.inbox.pending_for(person_of(session)))

    async def history_page(request: Request) -> Response:
        session = await signed_in(request)
        if session is None:
            return to_login(request)
        return page("history.html", session=session, approvals=ui.inbox.history_for(person_of(session)))

    def detail(session: SignedIn, view: ApprovalView, status_code: int = 200, error: str = "") -> Response:
        blocker = (who_may_not_answer(view.approvers, view.requester, view.self_approval,
                                      [v.approver for v in view.votes], session.user, view.call_id)
                   if view.status == "pending" else None)
        risky = {fact.argument: fact for fact in view.facts if fact.argument}
        link = (f"{ui.temporal_ui_url.rstrip('/')}/namespaces/{ui.temporal_namespace}/workflows/{view.workflow_id}"
                if ui.temporal_ui_url else None)
        return page("detail.html", status_code, session=session, view=view, blocker=blocker, risky=risky,
                    temporal_link=link, error=error)

    def visible(session: SignedIn, call_id: str) -> ApprovalView | None:
        view = ui.inbox.get(session.tenant, call_id)
        return view if view is not None and visible_to(view, person_of(session)) else None

    async def detail_page(request: Request) -> Response:
        session = await signed_in(request)
        if session is None:
            return to_login(request)
        view = visible(session, request.path_params["call_id"])
        if view is None:
            return page("message.html", 404, session=session, title="No such approval",
                        text="There is no approval with this id that you may see.", link=("/", "Back to the inbox"))
        return detail(session, view)

    async def answer_form(request: Request) -> Response:
        session = await signed_in(request)
        if session is None:
            return to_login(request)
        call_id = request.path_params["call_id"]
        form = await request.form()
        if not session.csrf_ok(str(form.get("csrf", ""))):
            await ui.desk.refuse(person_of(session), call_id, str(form.get("answer", "")), "web",
                                 "the form did not carry this session's CSRF token (cross-site request?)")
            return page("message.html", 403, session=session, title="Refused",
                        text="The form was not from this site; open the approval and answer again.")
        answer = str(form.get("answer", ""))
        if answer not in ("approve", "deny"):
            return page("message.html", 400, session=session, title="Refused", text="Choose approve or deny.")
        try:
            view = await ui.desk.answer(person_of(session), call_id, answer, digest=str(form.get("digest", "")),
                                        comment=str(form.get("comment", ""))[:2000], channel="web")
        except AnswerRefused as exc:
            shown = visible(session, call_id)
            if shown is None:
                return page("message.html", 404, session=session, title="Refused", text=str(exc))
            return detail(session, shown, 409, error=str(exc))
        return RedirectResponse(f"/approvals/{quote(view.call_id)}", status_code=303)

    async def events(request: Request) -> Response:
        session = await signed_in(request)
        if session is None:
            return PlainTextResponse("sign in first", status_code=401)
        person = person_of(session)

        async def stream():
            with ui.inbox.listen() as changes:
                yield ": connected\n\n"
                async for view in until_stopped(changes, ui.streams_end, keepalive_s=KEEPALIVE_S):
                    if view is None:
                        yield ": keepalive\n\n"
                    elif visible_to(view, person):
                        data = json.dumps({"call_id": view.call_id, "status": view.status})
                        yield f"event: approval\ndata: {data}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # --- usage (tenant admins only, their own tenant only) -------------------------------------------------

    async def usage_of(tenant: str, by: tuple[UsageDimension, ...], *,
                       chart: bool = True) -> tuple[UsageWindow, tuple[UsageTotals, ...], list[DayUsage]]:
        """The tenant's rows grouped by `by` over the window, and (for the chart) its days; UsageUnavailable when
        audit is not there to count them."""
        if ui.usage is None:
            raise UsageUnavailable("this approval service has no bus connection to ask the audit service")
        window = UsageWindow.ending(utcnow())
        answer = await ui.usage.report(tenant, by, window.since, days=chart)
        return window, answer.rows, by_day(answer.days, window) if chart else []

    def strict(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = USAGE_CSP
        return response

    async def usage_page(request: Request) -> Response:
        session = await signed_in(request)
        if session is None:
            return to_login(request)
        if not ui.directory.is_admin(session.tenant, session.user):
            return strict(page("message.html", 403, session=session, title="Usage is for admins",
                               text=f"Model usage of {session.tenant} is shown to its admins and owners only.",
                               link=("/", "Back to the inbox")))
        by = next((d for d in DIMENSIONS if d == request.query_params.get("by", "person")), None)
        if by is None:
            return strict(page("message.html", 400, session=session, title="No such grouping",
                               text=f"Group usage by one of {', '.join(DIMENSIONS)}.", link=("/usage", "Usage")))
        try:
            window, rows, series = await usage_of(session.tenant, (by,))
        except UsageUnavailable as exc:
            return strict(page("message.html", 503, session=session, title="Usage is unavailable",
                               text=f"{exc}. Nothing is shown rather than numbers that may be wrong; try again "
                                    "in a moment.", link=("/usage", "Try again")))
        return strict(page("usage.html", session=session, by=by, dimensions=DIMENSIONS, rows=rows,
                           total=totals(rows), window=window, chart=usage_chart(series)))

    # --- JSON API (bearer tokens from the same OIDC provider) ----------------------------------------------

    async def api_person(request: Request) -> Person | JSONResponse:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer "):
            return JSONResponse({"error": "send `Authorization: Bearer <OIDC token>` (embedded stack: "
                                          "`caduceus identity token --tenant T --user U`)"}, status_code=401)
        try:
            identity = await ui.api_verifier.verify(header[7:].strip())
        except TokenRefused as exc:
            await audit_forgery(request, f"approvals API refused a token: {exc.reason}")
            return JSONResponse({"error": exc.reply_text}, status_code=401)
        if not ui.directory.is_member(identity.tenant, identity.subject):
            return JSONResponse({"error": f"{identity.subject} is not a user of tenant {identity.tenant}"},
                                status_code=403)
        return Person(identity.tenant, identity.subject)

    async def api_list(request: Request) -> Response:
        person = await api_person(request)
        if isinstance(person, JSONResponse):
            return person
        which = request.query_params.get("status", "pending")
        views = ui.inbox.history_for(person) if which == "decided" else ui.inbox.pending_for(person)
        return JSONResponse({"approvals": [_public(v) for v in views]})

    async def api_show(request: Request) -> Response:
        person = await api_person(request)
        if isinstance(person, JSONResponse):
            return person
        view = ui.inbox.get(person.tenant, request.path_params["call_id"])
        if view is None or not visible_to(view, person):
            return JSONResponse({"error": f"no approval {request.path_params['call_id']} that you may see in "
                                          f"tenant {person.tenant}"}, status_code=404)
        return JSONResponse({"approval": _public(view)})

    async def api_answer(request: Request) -> Response:
        if request.path_params["answer"] not in ("approve", "deny"):
            return JSONResponse({"error": "POST to /api/approvals/<call id>/approve or .../deny"}, status_code=404)
        person = await api_person(request)
        if isinstance(person, JSONResponse):
            return person
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("digest"), str):
            return JSONResponse({"error": 'send JSON {"digest": "<the call digest you reviewed>", "comment": "..."}'},
                                status_code=400)
        try:
            view = await ui.desk.answer(person, request.path_params["call_id"], request.path_params["answer"],
                                        digest=body["digest"], comment=str(body.get("comment", ""))[:2000],
                                        channel=str(body.get("channel", "api"))[:64])
        except AnswerRefused as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        return JSONResponse({"approval": _public(view)})

    async def api_usage(request: Request) -> Response:
        person = await api_person(request)
        if isinstance(person, JSONResponse):
            return person
        if not ui.directory.is_admin(person.tenant, person.user):
            return JSONResponse({"error": f"model usage of {person.tenant} is for its admins and owners only"},
                                status_code=403)
        asked = dict.fromkeys(d.strip() for d in request.query_params.get("by", "person").split(",") if d.strip())
        by = tuple(d for d in asked if d in DIMENSIONS)  # as asked, each once: `caduceus usage --by`'s grouping
        if not by or len(by) != len(asked):
            return JSONResponse({"error": f"group by any of {', '.join(DIMENSIONS)}, e.g. ?by=person,day"},
                                status_code=400)
        try:
            window, rows, _ = await usage_of(person.tenant, by, chart=False)
        except UsageUnavailable as exc:
            return JSONResponse({"error": f"usage is unavailable: {exc}"}, status_code=503)
        # The shape of `caduceus usage --json`.
        return JSONResponse({"by": list(by), "since": window.since.isoformat(), "tenant": person.tenant,
                             "rows": [{**row.key, **row.model_dump(exclude={"key"})} for row in rows]})

    return Starlette(routes=[
        Route("/healthz", healthz),
        Route("/login", login),
        Route("/auth/callback", callback),
        Route("/logout", logout, methods=["POST"]),
        Route("/", inbox_page),
        Route("/inbox", inbox_rows),
        Route("/history", history_page),
        Route("/events", events),
        Route("/approvals/{call_id}", detail_page),
        Route("/approvals/{call_id}", answer_form, methods=["POST"]),
        Route("/usage", usage_page),
        Route("/api/usage", api_usage),
        Route("/api/approvals", api_list),
        Route("/api/approvals/{call_id}", api_show),
        Route("/api/approvals/{call_id}/{answer:str}", api_answer, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ], middleware=[Middleware(SecurityHeaders)])
