# The dashboard as a person sees it, in headless Chromium (Debian's, driven by
# Playwright): the numbers, the chart's series, the message list, a message's
# timeline and the preview of a recipient's copy; a click on a link inside the preview
# shows up on the timeline without a reload. Also takes the README's screenshot
# (docs/dashboard.png, with RELAY_SCREENSHOT=1). The suppression list page shows the
# address the upstream hard-bounced.
from __future__ import annotations

import os
from pathlib import Path

from playwright.async_api import Page, async_playwright, expect

from tests.admin import traffic
from tests.admin.conftest import CHROMIUM_ARGS

ROOT = Path(__file__).resolve().parents[2]
# The README's screenshot: refreshed only when asked (RELAY_SCREENSHOT=1), so a test run
# leaves the working tree as it found it; otherwise taken into the test's tmp dir.
SCREENSHOT = ROOT / "docs" / "dashboard.png"
# Nothing leaves the machine: every host name but loopback fails to resolve, so the
# redirect after a click (to example.com) ends in an error page, not on the internet.
NO_NETWORK = ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--no-proxy-server"]
TIMEOUT_MS = 15_000


def card(page: Page, key: str) -> str:
    return f'#counts .card[data-key="{key}"] .value'


async def test_dashboard_in_chromium(tmp_path: Path, chromium: str) -> None:
    t = await traffic.start(tmp_path)
    try:
        await traffic.send_known_traffic(t)
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS + NO_NETWORK)
            try:
                context = await browser.new_context(viewport={"width": 1360, "height": 900})
                context.set_default_timeout(TIMEOUT_MS)
                page = await context.new_page()
                problems: list[str] = []
                page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
                page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
                await check_dashboard(page, t, tmp_path)
                await check_message_page(page, t)
                await check_suppression_page(page, t)
                # The preview blocks remote images by default: those the browser reports
                # blocked are the pixels mailed to alice and bob, the only console errors allowed.
                blocked = [m for m in problems if "violates the following Content Security Policy directive: "
                           '"img-src data: cid:"' in m]
                assert len(blocked) == 2 and t.pixels["alice@example.org"] in blocked[0]
                assert t.pixels["bob@example.org"] in blocked[1]
                assert [m for m in problems if m not in blocked] == []
            finally:
                await browser.close()
    finally:
        await traffic.stop(t)


async def check_dashboard(page: Page, t: traffic.Traffic, tmp_path: Path) -> None:
    await page.goto(f"{t.admin}/?since=24h")
    # Every set, mail without a set, and the total, whatever their destinations.
    per_set = page.locator("#per-set tbody tr")
    await expect(per_set.locator("td:first-child")).to_have_text(["All", "news", "hooks", "(no set)"])
    await expect(page.locator('#per-set tr[data-set="All"] td:nth-child(2)')).to_have_text("3")
    await expect(page.locator('#per-set tr[data-set="hooks"] td:nth-child(2)')).to_have_text("1")
    await expect(page.locator('#per-set tr[data-set="(no set)"] td:nth-child(2)')).to_have_text("1")
    for subject in ("Spring news", "Plain note", "Hooked"):
        await expect(page.locator("#messages tbody tr", has_text=subject)).to_have_count(1)
    await wait_for_chart(page)
    shot = SCREENSHOT if os.environ.get("RELAY_SCREENSHOT") == "1" else tmp_path / "dashboard.png"
    shot.parent.mkdir(exist_ok=True)
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000  # a real picture of a drawn page

    # One set: its numbers, rates and chart.
    await page.locator("#sets a", has_text="news").click()
    await expect(page.locator("#heading")).to_have_text("news")
    expected = {"send": "1", "recipients": "3", "delivery": "2", "bounce": "1", "open": "2", "click": "3",
                "uniqueOpen": "1", "uniqueClick": "2"}
    for key, value in expected.items():
        await expect(page.locator(card(page, key))).to_have_text(value)
    await expect(page.locator('[data-rate="delivery"]')).to_have_text("66.7%")
    await expect(page.locator('[data-rate="bounce"]')).to_have_text("33.3%")
    await expect(page.locator('[data-rate="open"]')).to_have_text("50.0%")
    await expect(page.locator('[data-rate="click"]')).to_have_text("100.0%")
    traces = await wait_for_chart(page)
    assert traces == {"Sends": 1, "Deliveries": 2, "Bounces": 1, "Opens": 2, "Clicks": 3}
    await expect(page.locator("#top-links tbody tr td:first-child")).to_have_text(
        ["https://example.com/spring?a=1&b=2", "https://example.com/shop"])
    await expect(page.locator("#top-links tbody tr td:nth-child(2)")).to_have_text(["2", "1"])
    await expect(page.locator("#link-tags tbody tr").first).to_contain_text("campaign")

    # The message list searches recipient, subject and set.
    await page.goto(f"{t.admin}/?since=24h")
    await page.get_by_label("Search messages").fill("carol@")
    await page.get_by_role("button", name="Search").click()
    await expect(page.locator("#messages tbody tr")).to_have_count(1)
    await expect(page.locator("#messages tbody tr")).to_contain_text("Plain note")
    await page.get_by_label("Search messages").fill("spring")
    await page.get_by_role("button", name="Search").click()
    await expect(page.locator("#messages tbody tr")).to_have_count(1)


async def wait_for_chart(page: Page) -> dict[str, int]:
    """The plotly graph's traces (name -> sum of y), once plotly has drawn them as SVG."""
    await page.wait_for_function(
        "() => { const c = document.getElementById('chart');"
        " return c && c.data && c.querySelectorAll('.barlayer .trace').length === c.data.length; }")
    traces = await page.evaluate(
        "() => Array.from(document.getElementById('chart').data, t => [t.name, t.y.reduce((a, b) => a + b, 0)])")
    return dict(traces)


def recipient(page: Page, address: str) -> str:
    return f'section.recipient[data-recipient="{address}"]'


async def check_message_page(page: Page, t: traffic.Traffic) -> None:
    await page.locator("#messages a", has_text="Spring news").click()
    await expect(page.locator("#message-id")).to_have_text(t.news_id)
    alice, bob, nobody = (recipient(page, a) for a in ("alice@example.org", "bob@example.org", "nobody@example.org"))
    await expect(page.locator(f"{alice} tr.event td:nth-child(2)")).to_have_text(
        ["Send", "Delivery", "Open", "Open", "Click", "Click"])
    await expect(page.locator(f"{bob} tr.event td:nth-child(2)")).to_have_text(["Send", "Delivery", "Click"])
    await expect(page.locator(f"{nobody} tr.event td:nth-child(2)")).to_have_text(["Send", "Bounce"])
    await expect(page.locator(f"{alice} .state")).to_have_text("delivered")
    await expect(page.locator(f"{nobody} .state")).to_have_text("bounced")
    first_click = page.locator(f'{alice} tr[data-type="Click"]').first
    await expect(first_click).to_contain_text("https://example.com/spring?a=1&b=2")
    await expect(first_click).to_contain_text("AliceMail/1.0")
    await expect(first_click).to_contain_text("127.0.0.1")
    await expect(page.locator(f'{bob} tr[data-type="Click"]')).to_contain_text("https://example.com/shop")

    # The preview: alice's copy, sandboxed, with the tracking links that were mailed to her.
    frame_element = page.locator("#preview-frame")
    assert await frame_element.get_attribute("sandbox") == "allow-popups allow-popups-to-escape-sandbox"
    preview = page.frame_locator("#preview-frame")
    await expect(preview.locator("h1")).to_have_text("Spring news")
    shop = preview.get_by_role("link", name="Visit the shop")
    assert await shop.get_attribute("href") == t.links["alice@example.org"][1]

    # A click in the preview is a real hit: the Click row appears without a reload.
    await page.evaluate("() => { window.notReloaded = true; }")
    async with page.context.expect_page() as opened:
        await shop.click()
    popup = await opened.value
    clicks = page.locator(f'{alice} tr[data-type="Click"]')
    await expect(clicks).to_have_count(3)
    await expect(clicks.last).to_contain_text("https://example.com/shop")
    assert await page.evaluate("() => window.notReloaded") is True
    await popup.close()

    # Choosing another recipient shows the copy that recipient received: bob's own links.
    await page.locator(f"{bob} a.preview-link").click()
    await expect(page.locator("#preview h2")).to_contain_text("bob@example.org")
    await expect(preview.get_by_role("link", name="Visit the shop")).to_have_attribute(
        "href", t.links["bob@example.org"][1])
    assert t.links["bob@example.org"][1] != t.links["alice@example.org"][1]


async def check_suppression_page(page: Page, t: traffic.Traffic) -> None:
    await page.get_by_role("link", name="Suppression list").click()
    await expect(page.locator("#heading")).to_have_text("Suppression list")
    rows = page.locator("#suppressed tbody tr")
    # nobody@'s 550 5.1.1 was a Permanent bounce: SES (and relay) suppress the address.
    await expect(rows).to_have_count(1)
    row = page.locator('#suppressed tr[data-address="nobody@example.org"]')
    await expect(row.locator(".reason")).to_have_text("BOUNCE")
    await expect(page.locator("#total")).to_have_text("1")
    await page.get_by_label("Search addresses").fill("alice")
    await page.get_by_role("button", name="Search").click()
    await expect(rows).to_have_text(["No suppressed addresses match “alice”."])
    await page.get_by_label("Search addresses").fill("NOBODY")
    await page.get_by_role("button", name="Search").click()
    await expect(rows).to_have_count(1)
    # The message that caused it, one click away (not followed: its preview would load
    # alice's pixel again, which the console check above counts once).
    assert await row.get_by_role("link").get_attribute("href") == f"/messages/{t.news_id}"
