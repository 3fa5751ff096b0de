"""Usage in a real browser (headless Debian chromium driven by Playwright) on the embedded stack: alice chats (her
model calls go through the inference gateway, which records them), then carol, the demo tenant's admin, signs in
to the approvals UI and reads the usage page: alice's tokens as `caduceus usage` counts them, and the 30-day chart,
drawn with JavaScript off (it is server-rendered SVG). Under the page's strict CSP (its style is a file, not
inline): the browser reports no violation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from caduceus.cli import app
from caduceus_client import ChatClient
from caduceus_contracts import new_id
from caduceus_identity.devtoken import mint_dev_token

pytestmark = pytest.mark.timeout(300)

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PHONE = {"width": 390, "height": 844}


# Told to Python by every page of the context, from before the page's own script runs (Playwright's init scripts
# and bindings are the browser's, not the page's, so the page's CSP does not stop them).
REPORT_VIOLATIONS = """document.addEventListener("securitypolicyviolation", (e) => window.cspViolation(
  [e.documentURI, e.effectiveDirective, e.blockedURI, e.sourceFile + ":" + e.lineNumber].join(" ")));"""


async def watch_csp(context, origin: str) -> list[str]:
    """Every CSP violation the browser reports on `origin`'s pages: the DOM event (with JavaScript on), and the
    console's error (with it off too)."""
    seen: list[str] = []
    await context.expose_function("cspViolation", lambda text: seen.append(f"event: {text}")
                                  if text.startswith(origin) else None)
    await context.add_init_script(REPORT_VIOLATIONS)

    def on_console(message) -> None:
        if "Content Security Policy" in message.text and message.location.get("url", "").startswith(origin):
            seen.append(f"console: {message.location.get('url')}: {message.text}")

    context.on("console", on_console)
    return seen


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("Debian's chromium is not installed, so the usage page cannot be tested in a browser: "
                    "`apt-get install -y chromium` (`python3 dev.py test` does this as root)")
    return found


def usage_by_person(stack) -> dict[str, dict]:
    result = CliRunner().invoke(app, ["usage", "--state-dir", stack.info.state_dir, "--by", "person", "--tenant",
                                      "acme", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return {row["person"]: row for row in json.loads(result.stdout)["rows"]}


async def alice_has_used_the_model(stack) -> dict:
    """alice's row once her turn's model calls are in the audit trail (chatting first when none are)."""
    rows = await asyncio.to_thread(usage_by_person, stack)
    if rows.get("alice", {}).get("calls", 0) == 0:
        client = await ChatClient.connect(stack.info.bus_settings("client"))
        try:
            transcript = await client.send(tenant="acme", token=mint_dev_token(stack.info.dev_issuer_url, "acme",
                                                                               "alice"),
                                           text="hello", session_id=f"s-{new_id()[:16]}", timeout=120)
        finally:
            await client.close()
        assert transcript.reply is not None
    deadline = time.monotonic() + 60
    while True:
        rows = await asyncio.to_thread(usage_by_person, stack)
        if rows.get("alice", {}).get("calls", 0) > 0:
            return rows["alice"]
        assert time.monotonic() < deadline, "alice's model calls never reached the audit trail"
        await asyncio.sleep(0.5)


async def test_the_tenant_admin_reads_usage_and_its_chart_in_the_browser(stack, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    await alice_has_used_the_model(stack)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
        try:
            # JavaScript off: everything on the page, the chart included, is drawn by the server.
            context = await browser.new_context(viewport=PHONE, java_script_enabled=False)
            violations = await watch_csp(context, stack.info.approval_ui_url)
            page = await context.new_page()
            await page.goto(f"{stack.info.approval_ui_url}/usage")
            await expect(page.get_by_text("Development only")).to_be_visible()
            await page.get_by_role("button", name="carol@acme").click()
            await expect(page.get_by_role("heading", name="Model usage of acme")).to_be_visible()
            # Read after the page: the page's numbers can only be at or behind the CLI's.
            alice = (await asyncio.to_thread(usage_by_person, stack))["alice"]
            row = page.locator('#usage-table tr[data-key="alice"]')
            await expect(row).to_be_visible()
            shown_tokens = int(await row.locator('td[data-col="tokens"]').get_attribute("data-value"))
            assert 0 < shown_tokens <= alice["tokens"]
            chart = page.locator("svg.usage-chart")
            await expect(chart).to_be_visible()
            assert await chart.locator("rect.bar").count() == 30
            today = chart.locator("rect.bar").last
            assert int(await today.get_attribute("data-tokens")) > 0
            box = await today.bounding_box()
            assert box is not None and box["height"] > 0, "today's bar is drawn"
            shot = tmp_path / "usage-phone.png"
            await page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5_000
            # Styled by its stylesheet (the table scrolls inside its card), which the CSP let through.
            assert await page.locator(".usage-wrap").evaluate("e => getComputedStyle(e).overflowX") == "auto"
            assert violations == [], violations
            await context.close()

            # With JavaScript on, the page still fits a phone: nothing wider than the screen.
            context = await browser.new_context(viewport=PHONE)
            violations = await watch_csp(context, stack.info.approval_ui_url)
            page = await context.new_page()
            await page.goto(f"{stack.info.approval_ui_url}/usage?by=day")
            await page.get_by_role("button", name="carol@acme").click()
            await expect(page.get_by_role("heading", name="Model usage of acme")).to_be_visible()
            overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"the usage page is {overflow}px wider than a phone"
            assert violations == [], violations
            await context.close()
        finally:
            await browser.close()


async def test_only_the_approval_service_may_ask_audit_for_usage_on_the_locked_down_bus(stack) -> None:
    """A chat integration's bus credentials cannot ask audit for a tenant's usage: NATS refuses the request."""
    from caduceus_bus import EventConnection
    from caduceus_contracts import UsageAnswer, UsageQuery, subjects, utcnow

    conn = await EventConnection.connect(stack.info.bus_settings("client"), "usage-snoop")
    try:
        query = UsageQuery(tenant="acme", by=("person",), since=utcnow() - timedelta(days=30))
        answered: UsageAnswer | None = None
        with contextlib.suppress(Exception):  # refused by the server: no responder ever sees it, so it times out
            reply = await conn.nc.request(subjects.audit_usage("acme"), query.model_dump_json().encode(), timeout=3)
            answered = UsageAnswer.model_validate_json(reply.data)
        assert answered is None, "a chat integration read a tenant's usage from audit"
    finally:
        await conn.close()
