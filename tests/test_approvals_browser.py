"""An approver in a real browser (headless Debian chromium driven by Playwright) on the embedded stack: sign in
through the dev issuer, see alice's request appear live, approve it, and alice's turn finishes with the result.
All of it under the UI's strict Content-Security-Policy: the browser reports no violation on the way."""

from __future__ import annotations

import asyncio
import shutil
import tempfile

import pytest

from caduceus.commands.demo import APPROVAL_MESSAGE
from caduceus_client import ChatClient
from caduceus_contracts import new_id
from caduceus_identity.devtoken import mint_dev_token

pytestmark = pytest.mark.timeout(240)

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


# Told to Python by every page of the context, from before the page's own script runs (Playwright's init scripts
# and bindings are the browser's, not the page's, so the page's CSP does not stop them).
REPORT_VIOLATIONS = """document.addEventListener("securitypolicyviolation", (e) => window.cspViolation(
  [e.documentURI, e.effectiveDirective, e.blockedURI, e.sourceFile + ":" + e.lineNumber].join(" ")));"""


async def watch_csp(context, origin: str) -> list[str]:
    """Every CSP violation the browser reports on `origin`'s pages: the DOM event, and the console's error."""
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
        pytest.fail("Debian's chromium is not installed, so the approvals UI cannot be tested in a browser: "
                    "`apt-get install -y chromium` (`python3 dev.py test` does this as root)")
    return found


async def test_approver_signs_in_sees_the_request_live_and_approves_it(stack) -> None:
    from playwright.async_api import async_playwright, expect

    session_id = f"s-{new_id()[:16]}"
    token = mint_dev_token(stack.info.dev_issuer_url, "acme", "alice")
    client = await ChatClient.connect(stack.info.bus_settings("client"))
    with tempfile.TemporaryDirectory(prefix="approvals-browser-") as profile:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch_persistent_context(
                profile, executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True,
                viewport={"width": 390, "height": 844})  # a phone
            try:
                violations = await watch_csp(browser, stack.info.approval_ui_url)
                page = browser.pages[0] if browser.pages else await browser.new_page()
                await page.goto(stack.info.approval_ui_url)
                await expect(page.get_by_text("Development only")).to_be_visible()
                await page.get_by_role("button", name="carol@acme").click()
                await expect(page.get_by_role("heading", name="Waiting for you")).to_be_visible()

                # The inbox is open before alice asks: the request can only appear through the live stream.
                turn = asyncio.create_task(client.send(tenant="acme", token=token, text=APPROVAL_MESSAGE,
                                                       session_id=session_id, timeout=180, watch=True))
                request = page.locator(f'a.card[data-session-id="{session_id}"]', has_text="asked by alice")
                await expect(request).to_be_visible(timeout=60_000)
                await request.click()
                await expect(page.get_by_text("rm -rf build && echo build directory removed")).to_be_visible()
                await expect(page.locator("tr.risky")).to_contain_text("destructive")
                await expect(page.get_by_text(session_id)).to_be_visible()
                await page.get_by_label("Comment (optional)").fill("the build directory is scratch")
                await page.get_by_role("button", name="Approve").click()
                await expect(page.locator("#status")).to_have_text("approved")
                await expect(page.get_by_text("approved by carol (carol: the build directory is scratch)")).to_be_visible()
                # The answer comes back on the live stream too; the page already shows it, so it stays put (a reload
                # here once threw away what the approver was looking at).
                await page.evaluate("window.stayed = true")
                # The page's script and style are its own files: the live inbox, the countdown and the answer
                # all worked, and nothing on the way was refused by the CSP.
                await expect(page.locator('link[rel="stylesheet"]')).to_have_attribute("href", "/static/approvals.css")
                assert await page.evaluate("getComputedStyle(document.querySelector('header')).display") == "flex"
                assert violations == [], violations

                # Markup an attacker got into the page (a missed escape, say) runs nothing: the browser refuses an
                # inline event handler and an inline script, and says so.
                await page.evaluate("""() => {
                  document.querySelector("main").insertAdjacentHTML("beforeend",
                    '<img src="/static/no-such.png" onerror="window.pwned = 1">');
                  const script = document.createElement("script");
                  script.textContent = "window.pwned = 2";
                  document.body.appendChild(script);
                }""")
                for _ in range(100):
                    if len(violations) >= 2:
                        break
                    await asyncio.sleep(0.05)
                assert await page.evaluate("window.pwned") is None
                assert await page.evaluate("window.stayed") is True
                assert any("script-src-attr" in v for v in violations), violations
                assert any("script-src-elem" in v for v in violations), violations
            finally:
                await browser.close()
        transcript = await turn
    await client.close()

    assert transcript.reply is not None and transcript.reply.status == "ok"
    call = next(c for c in transcript.calls.values() if c.tool == "terminal")
    assert [d.verdict for d in call.decisions] == ["approve", "allow"]
    assert call.outcome.status == "ok" and call.outcome.executed_by
    assert "build directory removed" in call.outcome.result and "build directory removed" in transcript.reply.text
    assert [n.text for n in transcript.notices][:1] == ["waiting for approval from admin for terminal, expires in 15 min"]
