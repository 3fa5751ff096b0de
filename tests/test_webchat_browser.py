"""The web chat in a real browser (headless Debian chromium driven by Playwright) on the embedded stack: alice
signs in and chats, sees each tool call with its decision and the approval notice; carol, an approver, answers
from her own chat page; bob cannot open alice's conversation by its link; the main page fits a desktop and a
phone screen."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest

from caduceus.commands.demo import APPROVAL_MESSAGE, DEMO_MESSAGE

pytestmark = pytest.mark.timeout(300)

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("Debian's chromium is not installed, so the web chat cannot be tested in a browser: "
                    "`apt-get install -y chromium` (`python3 dev.py test` does this as root)")
    return found


@contextlib.asynccontextmanager
async def chromium():
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


async def signed_in(browser, url: str, who: str, viewport=DESKTOP):
    """A fresh browser context (its own cookies) signed in to the web chat as `who` (e.g. alice@acme)."""
    from playwright.async_api import expect

    context = await browser.new_context(viewport=viewport)
    page = await context.new_page()
    await page.goto(url)
    await expect(page.get_by_text("Development only")).to_be_visible()
    await page.get_by_role("button", name=who).click()
    await expect(page.locator("#who")).to_have_text(who)
    return context, page


async def start_conversation(page, workspace: str = "default") -> str:
    await page.get_by_label("Workspace").select_option(workspace)
    await page.get_by_role("button", name="New conversation").click()
    await page.wait_for_url("**/c/*")
    return page.url


async def test_alice_chats_sees_the_calls_and_carol_approves_from_her_chat_page(stack) -> None:
    from playwright.async_api import expect

    url = stack.info.webchat_url
    async with chromium() as browser:
        alice_context, alice = await signed_in(browser, url, "alice@acme", PHONE)
        conversation_url = await start_conversation(alice)
        await alice.get_by_label("Message").fill(DEMO_MESSAGE)
        await alice.get_by_role("button", name="Send").click()
        reply = alice.locator("li.entry.agent").last
        await expect(reply).to_contain_text("Workspace check", timeout=120_000)
        terminal = alice.locator("li.call", has=alice.locator(".tool", has_text="terminal"))
        await expect(terminal.locator(".verdict")).to_have_text("allow")
        await expect(terminal.locator(".outcome")).to_have_text("ok")
        write = alice.locator("li.call", has=alice.locator(".tool", has_text="write_file"))
        await expect(write.locator(".verdict")).to_have_text("deny")

        # Resumable: after a reload the conversation is listed and shown as it was.
        await alice.reload()
        await expect(alice.locator("#conversations a[aria-current]")).to_contain_text("Please check the workspace")
        await expect(alice.locator("li.call .tool", has_text="write_file")).to_be_visible()

        # Bob, signed in, cannot open it by its link.
        bob_context, bob = await signed_in(browser, url, "bob@acme")
        await bob.goto(conversation_url)
        await expect(bob.get_by_role("heading", name="No such conversation")).to_be_visible()
        await expect(bob.locator("body")).not_to_contain_text("Please check the workspace")
        await bob_context.close()

        # A call that needs an approver: alice is told she waits; carol answers from her own chat page.
        carol_context, carol = await signed_in(browser, url, "carol@acme")
        await alice.get_by_label("Message").fill(APPROVAL_MESSAGE)
        await alice.get_by_role("button", name="Send").click()
        await expect(alice.locator("li.entry.notice").first).to_contain_text(
            "waiting for approval from admin for terminal, expires in 15 min", timeout=120_000)
        waiting = carol.locator("#approval-list li", has_text="asked by alice")
        await expect(waiting).to_be_visible(timeout=30_000)
        await expect(waiting).to_contain_text("rm -rf build")
        answered = carol.locator(f'#approval-list li[data-call-id="{await waiting.get_attribute("data-call-id")}"]')
        await waiting.get_by_role("button", name="Approve").click()
        await expect(answered).to_contain_text("You answered approve for terminal: approved")
        await expect(alice.locator("li.entry.agent").last).to_contain_text("Cleanup result", timeout=120_000)
        await expect(alice.locator("li.entry.notice").last).to_contain_text("approved by carol")
        await carol_context.close()
        await alice_context.close()


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
async def test_the_main_page_fits_the_screen_with_everything_visible(stack, viewport, tmp_path: Path) -> None:
    from playwright.async_api import expect

    async with chromium() as browser:
        context, page = await signed_in(browser, stack.info.webchat_url, "alice@acme", viewport)
        await start_conversation(page)
        await page.get_by_label("Message").fill("hello")
        await page.get_by_role("button", name="Send").click()
        await expect(page.locator("li.entry.agent").last).to_contain_text("Hello!", timeout=60_000)
        for visible in (page.get_by_label("Message"), page.get_by_role("button", name="Send"),
                        page.get_by_role("button", name="New conversation"), page.locator("#who"),
                        page.get_by_role("button", name="Sign out")):
            await expect(visible).to_be_visible()
        overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow}px wider than a {viewport['width']}px screen"
        for box in (await page.locator("li.entry, .compose, .side").all()):
            bounds = await box.bounding_box()
            assert bounds is not None and bounds["x"] >= 0 and bounds["x"] + bounds["width"] <= viewport["width"] + 1
        shot = tmp_path / f"webchat-{viewport['width']}.png"
        await page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5_000
        await context.close()
