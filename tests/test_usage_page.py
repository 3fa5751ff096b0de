"""The usage page of the approvals UI: a tenant admin signs in (real OIDC sign-in through the dev issuer) and
sees their tenant's model usage, counted by the real audit service from its store and asked for over the real
bus; the numbers are `caduceus usage --json`'s. (Tenants of their own: the session's NATS stream carries other
tests' events, which this audit service stores too.) Members and other tenants' admins see none of it."""

from __future__ import annotations

import contextlib
import html
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from markupsafe import escape
from nats.aio.client import Client as NatsClient
from typer.testing import CliRunner

from caduceus.cli import app
from caduceus_approval.app import ApprovalService
from caduceus_approval.app import build as build_approval
from caduceus_approval.settings import ApprovalSettings
from caduceus_approval.usage import UsageWindow
from caduceus_audit import AuditStore
from caduceus_audit.app import AuditService
from caduceus_audit.app import build as build_audit
from caduceus_audit.testing import Published, quick_settings, record_published
from caduceus_contracts import (
    ModelCallDecided,
    ModelCallRequested,
    ModelDecision,
    ModelUsage,
    SessionGrant,
    SignedGrant,
    SignedModelDecision,
    Signer,
    UsageAnswer,
    UsageQuery,
    ensure_signer,
    subjects,
    utcnow,
)
from caduceus_directory import DirectorySource
from caduceus_embedded.ports import free_port
from caduceus_identity.adapters.dev_issuer import DevIssuer, DevIssuerServer, load_or_create_key

pytestmark = pytest.mark.timeout(120)

TENANTS_YAML = """\
tenants:
  umbra:
    display_name: Umbra Corp
    workspaces: [default, research]
    users:
      alice: {email: alice@umbra.example, roles: [member]}
      carol: {email: carol@umbra.example, roles: [admin]}
      olga: {email: olga@umbra.example, roles: [owner]}
  vexa:
    display_name: Vexa
    workspaces: [default]
    users:
      gina: {email: gina@vexa.example, roles: [admin]}
"""
IDENTITY, POLICY = Signer.generate("identity"), Signer.generate("policy")
DIGEST = "cd" * 32
HOSTILE_PERSON = "<img src=x onerror=alert(1)>"
HOSTILE_MODEL = '"><script>alert(2)</script>'
DIMENSIONS = ("tenant", "person", "workspace", "model", "day")


def used(tenant: str, user: str, model: str, prompt: int, completion: int, cost: float, at: datetime,
         workspace: str = "default") -> Published:
    event = ModelUsage(tenant=tenant, workspace=workspace, session_id="s1", user=user, model=model,
                       prompt_tokens=prompt, completion_tokens=completion, cost_usd=cost, occurred_at=at)
    return Published(subjects.model_usage(tenant), event, {"Nats-Msg-Id": event.event_id})


def refused(tenant: str, user: str, call_id: str, at: datetime) -> list[Published]:
    grant = SignedGrant.issue(IDENTITY, SessionGrant(tenant=tenant, workspace="default", user=user, roles=("member",),
                                                     channel="cli", session_id="s1", issued_at=at,
                                                     expires_at=at + timedelta(hours=1)))
    asked = ModelCallRequested(tenant=tenant, call_id=call_id, grant=grant, workspace="default", session_id="s1",
                               model="big-1", prompt="hi", prompt_digest=DIGEST, occurred_at=at)
    decided = ModelCallDecided(tenant=tenant, call_id=call_id, workspace="default", occurred_at=at,
                               decision=SignedModelDecision.issue(POLICY, ModelDecision(
                                   tenant=tenant, workspace="default", session_id="s1", call_id=call_id,
                                   prompt_digest=DIGEST, verdict="deny", reason="over budget",
                                   expires_at=at + timedelta(minutes=1))))
    return [Published(subjects.model_requested(tenant), asked, {"Nats-Msg-Id": asked.event_id}),
            Published(subjects.model_decided(tenant), decided, {"Nats-Msg-Id": decided.event_id})]


def recorded_usage(now: datetime) -> list[Published]:
    today = now.replace(microsecond=0) - timedelta(minutes=5)
    if today.date() != now.date():  # just after midnight: keep "today" today
        today = now.replace(microsecond=0)
    yesterday, week_ago = today - timedelta(days=1), today - timedelta(days=7)
    return [
        used("umbra", "alice", "big-1", 100, 20, 0.01, yesterday),
        used("umbra", "alice", "big-1", 50, 10, 0.005, today),
        used("umbra", "carol", "small-1", 30, 5, 0.0, today, workspace="research"),
        used("umbra", HOSTILE_PERSON, HOSTILE_MODEL, 3, 1, 0.0, week_ago),
        *refused("umbra", "alice", "m-refused", today),
        used("vexa", "gina", "big-1", 7, 3, 0.0, today),
        used("umbra", "alice", "big-1", 999, 1, 9.0, today - timedelta(days=60)),  # outside the last 30 days
    ]


@dataclass
class UsageStack:
    base: Path
    db_url: str
    nats_url: str
    audit: AuditService
    approval: ApprovalService
    issuer: DevIssuerServer

    @property
    def ui_url(self) -> str:
        assert self.approval.settings.ui_url is not None
        return self.approval.settings.ui_url

    @property
    def issuer_url(self) -> str:
        return self.issuer.issuer.issuer_url

    def token(self, tenant: str, user: str) -> str:
        from caduceus_identity.adapters.dev_issuer import TokenRequest
        return self.issuer.issuer.mint(TokenRequest(tenant=tenant, user=user))


@pytest.fixture(scope="module")
async def usage_stack(tmp_path_factory: pytest.TempPathFactory, nats_server) -> AsyncIterator[UsageStack]:
    base = tmp_path_factory.mktemp("usage-page")
    (base / "tenants.yaml").write_text(TENANTS_YAML)
    db_url = f"sqlite:///{base}/audit.db"
    store = AuditStore(db_url)
    store.ensure_schema()
    record_published(store, recorded_usage(datetime.now(UTC)))
    store.close()
    issuer_port = free_port()
    issuer_url = f"http://127.0.0.1:{issuer_port}"
    issuer = DevIssuerServer(DevIssuer(load_or_create_key(base / "keys" / "dev-issuer.pem"), issuer_url, "caduceus",
                                       DirectorySource(base / "tenants.yaml")), "127.0.0.1", issuer_port)
    await issuer.start()
    for name in ("identity", "policy"):
        ensure_signer(base / "keys", name)
    audit = build_audit(quick_settings(nats_server.url, db_url, base / "audit-state"))
    await audit.start()
    # Temporal is not needed to show usage: the approval service keeps reaching for it meanwhile.
    approval = build_approval(ApprovalSettings(
        nats_url=nats_server.url, state_dir=base, keys_dir=base / "keys", tenants_file=base / "tenants.yaml",
        temporal_address=f"127.0.0.1:{free_port()}", temporal_retry_s=5.0, ui_port=free_port(),
        oidc_issuer_url=issuer_url, usage_timeout_s=5.0))
    await approval.start()
    stack = UsageStack(base, db_url, nats_server.url, audit, approval, issuer)
    try:
        yield stack
    finally:
        await approval.stop()
        with contextlib.suppress(Exception):
            await stack.audit.stop()
        await issuer.stop()


async def sign_in(stack: UsageStack, who: str, next_path: str = "/usage") -> httpx.AsyncClient:
    """A browser-like client signed in as `who` (tenant/user) through the provider's sign-in page."""
    browser = httpx.AsyncClient(base_url=stack.ui_url, follow_redirects=False, timeout=15)
    to_provider = await browser.get("/login", params={"next": next_path})
    authorize = to_provider.headers["location"]
    async with httpx.AsyncClient(timeout=10) as provider:
        back = await provider.post(f"{stack.issuer_url}/authorize",
                                   data={**dict(parse_qsl(urlsplit(authorize).query)), "who": who})
    landed = await browser.get(back.headers["location"])
    assert (landed.status_code, landed.headers["location"]) == (303, next_path)
    return browser


def cli_usage(stack: UsageStack, by: str, tenant: str) -> dict:
    since = UsageWindow.ending(utcnow()).since.isoformat()
    result = CliRunner().invoke(app, ["usage", "--db", stack.db_url, "--by", by, "--tenant", tenant, "--since", since,
                                      "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def table_rows(page: str) -> dict[str, dict[str, float]]:
    """The usage table as shown: each row's key, and each number cell's exact value."""
    rows = {}
    for key, cells in re.findall(r'<tr data-key="([^"]*)">(.*?)</tr>', page, re.S):
        rows[html.unescape(key)] = {col: float(value) for col, value in
                                    re.findall(r'data-col="([a-z_]+)" data-value="([^"]*)"', cells)}
    return rows


NUMBERS = ("prompt_tokens", "completion_tokens", "tokens", "cost_usd", "calls", "refusals")


@pytest.mark.parametrize("by", DIMENSIONS)
async def test_an_admin_sees_the_numbers_caduceus_usage_prints(usage_stack: UsageStack, by: str) -> None:
    carol = await sign_in(usage_stack, "umbra/carol")
    page = await carol.get("/usage", params={"by": by})
    assert page.status_code == 200, page.text
    expected = cli_usage(usage_stack, by, "umbra")["rows"]
    assert expected, "the CLI found usage to compare with"
    shown = table_rows(page.text)
    assert set(shown) == {row[by] for row in expected}
    for row in expected:
        assert shown[row[by]] == {n: pytest.approx(float(row[n])) for n in NUMBERS}, row
    # The JSON API says it in the very shape of `caduceus usage --json`.
    api = await carol.get("/api/usage", params={"by": by},
                          headers={"authorization": f"Bearer {usage_stack.token('umbra', 'carol')}"})
    assert api.status_code == 200 and api.json()["rows"] == expected


async def test_the_totals_cover_30_days_and_the_chart_has_a_bar_for_each_day(usage_stack: UsageStack) -> None:
    olga = await sign_in(usage_stack, "umbra/olga")  # an owner is an admin too
    page = (await olga.get("/usage")).text
    # 100+20 + 50+10 + 30+5 + 3+1 tokens; the call 60 days ago is outside the window.
    assert re.search(r'id="total-tokens">219<', page) and re.search(r'id="total-refusals">1<', page)
    assert re.search(r'id="total-calls">4<', page)
    bars = re.findall(r'<rect class="bar" data-day="([0-9-]+)" data-tokens="(\d+)" data-refusals="(\d+)"', page)
    assert len(bars) == 30
    today = datetime.now(UTC).date()
    assert bars[-1][0] == today.isoformat() and bars[0][0] == (today - timedelta(days=29)).isoformat()
    by_day = {day: (int(tokens), int(refusals)) for day, tokens, refusals in bars}
    assert by_day[today.isoformat()] == (95, 1)
    assert by_day[(today - timedelta(days=1)).isoformat()][0] == 120
    assert sum(tokens for tokens, _ in by_day.values()) == 219
    assert page.count('<circle class="refusal"') == 1
    assert 'href="/usage"' in page  # the admin's navigation links to it


async def test_a_member_is_refused_with_403_and_sees_no_link(usage_stack: UsageStack) -> None:
    alice = await sign_in(usage_stack, "umbra/alice", next_path="/")
    page = await alice.get("/usage")
    assert page.status_code == 403 and "for admins" in page.text
    assert "219" not in page.text and "big-1" not in page.text
    assert 'href="/usage"' not in (await alice.get("/")).text
    api = await alice.get("/api/usage", headers={"authorization": f"Bearer {usage_stack.token('umbra', 'alice')}"})
    assert api.status_code == 403 and "rows" not in api.json()


async def test_another_tenants_admin_sees_only_their_own_tenant(usage_stack: UsageStack) -> None:
    gina = await sign_in(usage_stack, "vexa/gina")
    for params in ({"by": "person"}, {"by": "person", "tenant": "umbra"}):
        page = await gina.get("/usage", params=params)
        assert page.status_code == 200
        assert set(table_rows(page.text)) == {"gina"}
        assert "alice" not in page.text and "umbra" not in page.text
    api = await gina.get("/api/usage", params={"by": "tenant", "tenant": "umbra"},
                         headers={"authorization": f"Bearer {usage_stack.token('vexa', 'gina')}"})
    assert [(r["tenant"], r["tokens"]) for r in api.json()["rows"]] == [("vexa", 10)]


async def test_signed_out_people_are_sent_to_sign_in(usage_stack: UsageStack) -> None:
    async with httpx.AsyncClient(base_url=usage_stack.ui_url, follow_redirects=False) as anonymous:
        page = await anonymous.get("/usage")
        assert page.status_code == 303 and page.headers["location"].startswith("/login?next=")
        assert (await anonymous.get("/api/usage")).status_code == 401


async def test_hostile_names_are_escaped_and_the_page_runs_no_script(usage_stack: UsageStack) -> None:
    carol = await sign_in(usage_stack, "umbra/carol")
    for by in ("person", "model"):
        page = await carol.get("/usage", params={"by": by})
        assert "<img src=x" not in page.text and "<script>alert" not in page.text
        assert "<script" not in page.text  # the chart is SVG drawn on the server
        hostile = HOSTILE_PERSON if by == "person" else HOSTILE_MODEL
        assert str(escape(hostile)) in page.text and hostile in table_rows(page.text)
        csp = page.headers["content-security-policy"]
        assert "script-src 'none'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
        assert "<style" not in page.text and " style=" not in page.text  # the style is /static/approvals.css
        assert page.headers["x-content-type-options"] == "nosniff" and page.headers["x-frame-options"] == "DENY"


async def test_audit_answers_only_about_the_tenant_of_the_subject(usage_stack: UsageStack) -> None:
    nc = NatsClient()
    await nc.connect(usage_stack.nats_url)
    try:
        since = UsageWindow.ending(utcnow()).since
        forged = UsageQuery(tenant="umbra", by=("person",), since=since).model_dump_json().encode()
        answer = UsageAnswer.model_validate_json((await nc.request(subjects.audit_usage("vexa"), forged,
                                                                   timeout=10)).data)
        assert answer.rows == () and "asked on" in answer.problem
        junk = UsageAnswer.model_validate_json((await nc.request(subjects.audit_usage("umbra"), b"{not json",
                                                                 timeout=10)).data)
        assert junk.rows == () and junk.problem
    finally:
        await nc.close()


async def test_with_audit_down_the_page_says_unavailable_rather_than_zero(usage_stack: UsageStack) -> None:
    carol = await sign_in(usage_stack, "umbra/carol")
    await usage_stack.audit.stop()
    try:
        page = await carol.get("/usage")
        assert page.status_code == 503 and "Usage is unavailable" in page.text and "audit service" in page.text
        assert "total-tokens" not in page.text
        api = await carol.get("/api/usage", headers={"authorization": f"Bearer {usage_stack.token('umbra', 'carol')}"})
        assert api.status_code == 503
    finally:
        usage_stack.audit = build_audit(quick_settings(usage_stack.nats_url, usage_stack.db_url,
                                                       usage_stack.base / "audit-state"))
        await usage_stack.audit.start()
    assert (await carol.get("/usage")).status_code == 200


async def test_the_api_groups_by_several_dimensions_like_the_cli_and_refuses_unknown_ones(
        usage_stack: UsageStack) -> None:
    async with httpx.AsyncClient(base_url=usage_stack.ui_url, timeout=15) as client:
        headers = {"authorization": f"Bearer {usage_stack.token('umbra', 'carol')}"}
        api = await client.get("/api/usage", params={"by": "day,model"}, headers=headers)
        assert api.status_code == 200 and api.json()["rows"] == cli_usage(usage_stack, "day,model", "umbra")["rows"]
        for by in ("colour", "person,colour", "", ",".join(["person"] * 9) + ",tenant;drop"):
            refused = await client.get("/api/usage", params={"by": by}, headers=headers)
            assert refused.status_code == 400 and "group by any of" in refused.json()["error"], by
        assert (await client.get("/api/usage", params={"by": "person,person"}, headers=headers)).status_code == 200
