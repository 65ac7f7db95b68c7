# The full tracking loop through `relay serve`: a tracked message reaches the
# upstream as one copy per recipient; its pixel and links, requested over real
# HTTP, answer at once and record Open/Click events for that recipient.
from __future__ import annotations

import asyncio
import email
import html
import json
import re
import time
from email import policy
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from relay.events.webhook import verify
from relay.tracking import PIXEL
from tests.support import RelayProcess, Upstream, free_port, wait_for
from tests.test_serve import submit

TRACKED = """
[configuration_sets.news]
[[configuration_sets.news.event_destinations]]
name = "db"
type = "sqlite"
matching_event_types = ["send", "delivery", "open", "click", "renderingFailure"]
[[configuration_sets.news.event_destinations]]
name = "jsonl"
type = "file"
path = "events.jsonl"
matching_event_types = ["open", "click"]
[[configuration_sets.news.event_destinations]]
name = "off"
type = "file"
path = "disabled.jsonl"
enabled = false
matching_event_types = ["open", "click", "send"]
[[configuration_sets.news.event_destinations]]
name = "clicksonly"
type = "file"
path = "clicks.jsonl"
matching_event_types = ["click"]
"""

HTML_MESSAGE = """From: News <news@example.com>\r
To: list@example.org\r
Subject: Spring\r
X-SES-CONFIGURATION-SET: news\r
MIME-Version: 1.0\r
Content-Type: multipart/alternative; boundary="b1"\r
\r
--b1\r
Content-Type: text/plain; charset=utf-8\r
\r
Shop: https://shop.example.com/spring?a=1&b=2\r
--b1\r
Content-Type: text/html; charset=utf-8\r
\r
<html><body><p>Hi</p>\r
<a href="https://shop.example.com/spring?a=1&amp;b=2" ses:tags="product:shoes;slot:hero;">Shop</a>\r
<a ses:no-track href="https://example.com/reset?t=secret">Reset</a>\r
</body></html>\r
--b1--\r
"""

RCPTS = ["ana@example.org", "bob@example.org", "cy@example.org"]


def urls_in(data: bytes) -> tuple[list[str], list[str]]:
    """The pixel and click URLs in a delivered copy (decoded parts)."""
    msg = email.message_from_bytes(data, policy=policy.default)
    pixels: list[str] = []
    links: list[str] = []
    for part in msg.walk():
        if part.get_content_maintype() != "text":
            continue
        text = part.get_content()
        # In HTML the link's "&" is written "&amp;", as a browser reads it.
        unescape = html.unescape if part.get_content_subtype() == "html" else str
        pixels += re.findall(r'src="(http://127\.0\.0\.1:\d+/o/[^"]+)"', text)
        links += [unescape(u) for u in re.findall(r"(http://127\.0\.0\.1:\d+/c/[A-Za-z0-9_\-]+/[^\s\"'<>]+)", text)]
    return pixels, links


def db_events(relay: RelayProcess, event_type: str) -> list[tuple[str, dict]]:
    rows = relay.query("SELECT recipient, body FROM events WHERE event_type = ? ORDER BY seq", (event_type,))
    return [(r, json.loads(b)) for r, b in rows]


@pytest.fixture
async def tracked(tmp_path: Path):
    up = await Upstream().start()
    relay = RelayProcess(tmp_path, TRACKED, upstream_url=f"smtp://127.0.0.1:{up.port}")
    await relay.start()
    reply = await submit(relay.smtp_port, HTML_MESSAGE, sender="news@example.com", rcpts=RCPTS)
    await wait_for(lambda: len(up.messages) == 3)
    yield relay, up, reply.split()[1]
    await relay.stop()
    await up.stop()


async def test_three_recipients_three_copies(tracked) -> None:
    relay, up, _ = tracked
    assert sorted(m.rcpts[0] for m in up.messages) == RCPTS
    assert all(len(m.rcpts) == 1 for m in up.messages)
    assert up.handler.sessions >= 2  # copies went out in parallel over pooled connections
    seen: set[str] = set()
    for m in up.messages:
        pixels, links = urls_in(m.data)
        assert len(pixels) == 1 and len(links) == 2  # html link + text link; no-track skipped
        assert b"ses:no-track" not in m.data and b"ses:tags" not in m.data
        assert b"https://example.com/reset?t=secret" in m.data
        assert not seen & set(pixels + links)  # every recipient has their own URLs
        seen |= set(pixels + links)


async def test_pixel_and_redirects_record_per_recipient(tracked) -> None:
    relay, up, message_id = tracked
    async with aiohttp.ClientSession() as http:
        for m in up.messages:
            pixels, links = urls_in(m.data)
            for _ in range(2):  # every hit counts: no de-duplication
                async with http.get(pixels[0], headers={"User-Agent": "TestMail/1"}) as r:
                    assert r.status == 200
                    assert r.headers["Content-Type"] == "image/gif"
                    assert "no-store" in r.headers["Cache-Control"] and r.headers["Pragma"] == "no-cache"
                    body = await r.read()
                    assert body == PIXEL and body.startswith(b"GIF89a")
            for link in links:
                async with http.get(link, allow_redirects=False) as r:
                    assert r.status == 302
                    assert r.headers["Location"] == "https://shop.example.com/spring?a=1&b=2"
            # HEAD answers like GET (a link checker's or a proxy's prefetch) but is not a click
            async with http.head(links[0], allow_redirects=False) as r:
                assert r.status == 302 and r.headers["Location"] == "https://shop.example.com/spring?a=1&b=2"
            async with http.head(pixels[0]) as r:
                assert r.status == 200 and r.headers["Content-Type"] == "image/gif"
    opens = await wait_for(lambda: len(db_events(relay, "Open")) == 6 and db_events(relay, "Open"))
    clicks = await wait_for(lambda: len(db_events(relay, "Click")) == 6 and db_events(relay, "Click"))
    for rcpt in RCPTS:
        mine = [e for r, e in opens if r == rcpt]
        assert len(mine) == 2 and all(e["open"]["recipient"] == rcpt for e in mine)
        assert mine[0]["open"]["userAgent"] == "TestMail/1"
        assert mine[0]["open"]["ipAddress"] == "127.0.0.1"
        assert mine[0]["mail"]["messageId"] == message_id
    html_clicks = [e for _, e in clicks if e["click"]["linkTags"]]
    assert html_clicks[0]["click"]["linkTags"] == {"product": ["shoes"], "slot": ["hero"]}
    assert html_clicks[0]["click"]["link"] == "https://shop.example.com/spring?a=1&b=2"
    # The JSONL destination got the same opens and clicks; the disabled one nothing;
    # the click-only one only clicks.
    jsonl = relay.tmp / "events.jsonl"  # written once the primary publishes (another worker may record)
    lines = await wait_for(lambda: jsonl.exists() and len(jsonl.read_text().splitlines()) == 12
                           and jsonl.read_text().splitlines())
    assert {json.loads(x)["eventType"] for x in lines} == {"Open", "Click"}
    # Each file destination publishes from its own outbox rows, at its own pace.
    clicks_only = await wait_for(lambda: (relay.tmp / "clicks.jsonl").exists()
                                 and len((relay.tmp / "clicks.jsonl").read_text().splitlines()) >= 6
                                 and (relay.tmp / "clicks.jsonl").read_text().splitlines())
    assert len(clicks_only) == 6 and {json.loads(x)["eventType"] for x in clicks_only} == {"Click"}
    assert not (relay.tmp / "disabled.jsonl").exists()
    assert len(db_events(relay, "Open")) == 6 and len(db_events(relay, "Click")) == 6  # no HEAD among them


async def test_tampered_tokens_404_and_record_nothing(tracked) -> None:
    relay, up, _ = tracked
    pixels, links = urls_in(up.messages[0].data)
    async with aiohttp.ClientSession() as http:
        for url in (pixels[0], links[0]):
            base, kind, rest = url.partition("/o/") if "/o/" in url else url.partition("/c/")
            token, slash, target = rest.partition("/")
            flipped = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
            for bad in (base + kind + flipped + slash + target, url + "x", base + kind):
                async with http.get(bad, allow_redirects=False) as r:
                    assert r.status == 404 and "Location" not in r.headers
        # the destination is signed too: another one is refused
        other = links[0].replace("shop.example.com", "evil.example")
        async with http.get(other, allow_redirects=False) as r:
            assert r.status == 404 and "Location" not in r.headers
        # an open token is not a click token and vice versa
        async with http.get(pixels[0].replace("/o/", "/c/"), allow_redirects=False) as r:
            assert r.status == 404
        async with http.get(f"http://127.0.0.1:{relay.http_port}/healthz") as r:
            assert r.status == 200
        async with http.get(f"http://127.0.0.1:{relay.http_port}/admin") as r:
            assert r.status == 404
    await asyncio.sleep(0.3)
    assert db_events(relay, "Open") == [] and db_events(relay, "Click") == []


async def test_window_expiry_serves_but_records_nothing(tmp_path: Path) -> None:
    up = await Upstream().start()
    relay = RelayProcess(tmp_path, TRACKED, upstream_url=f"smtp://127.0.0.1:{up.port}")
    relay.config_path.write_text(relay.config_path.read_text().replace(
        "[tracking]\n", "[tracking]\nwindow_days = 0.00002\n"))  # ~1.7 s
    try:
        await relay.start()
        await submit(relay.smtp_port, HTML_MESSAGE, sender="news@example.com", rcpts=RCPTS[:1])
        await wait_for(lambda: up.messages)
        pixels, links = urls_in(up.messages[0].data)
        await asyncio.sleep(2.0)
        async with aiohttp.ClientSession() as http:
            async with http.get(pixels[0]) as r:
                assert r.status == 200 and (await r.read()).startswith(b"GIF89a")
            async with http.get(links[0], allow_redirects=False) as r:
                assert r.status == 302 and r.headers["Location"].startswith("https://shop.example.com/")
        await asyncio.sleep(0.5)
        assert db_events(relay, "Open") == [] and db_events(relay, "Click") == []
    finally:
        await relay.stop()
        await up.stop()


async def test_webhook_receives_events_across_restart(tmp_path: Path) -> None:
    received: list[tuple[dict, str]] = []
    statuses = [500]

    async def hook(request: web.Request) -> web.Response:
        body = await request.text()
        status = statuses.pop(0) if statuses else 200
        if status == 200:
            received.append((dict(request.headers), body))
        return web.Response(status=status)

    hook_port = free_port()
    config = TRACKED + f"""
[[configuration_sets.news.event_destinations]]
name = "hook"
type = "webhook"
url = "http://127.0.0.1:{hook_port}/events"
secret = "0123456789abcdef0123"
matching_event_types = ["send", "open"]
"""
    up = await Upstream().start()
    relay = RelayProcess(tmp_path, config, upstream_url=f"smtp://127.0.0.1:{up.port}")
    runner: web.AppRunner | None = None
    try:
        await relay.start()
        await submit(relay.smtp_port, HTML_MESSAGE, sender="news@example.com", rcpts=RCPTS[:1])
        await wait_for(lambda: up.messages)
        pixels, _ = urls_in(up.messages[0].data)
        async with aiohttp.ClientSession() as http:
            async with http.get(pixels[0]) as r:
                assert r.status == 200
        await wait_for(lambda: relay.query("SELECT count(*) FROM webhook_outbox") == [(2,)])
        assert await relay.stop() == 0  # the receiver was down all along
        app = web.Application()
        app.router.add_post("/events", hook)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", hook_port).start()
        await relay.start()
        await wait_for(lambda: len(received) == 2, 30)
        assert sorted(json.loads(b)["eventType"] for _, b in received) == ["Open", "Send"]
        headers = received[0][0]
        assert headers["Content-Type"].startswith("application/json")
        assert headers["X-Relay-Event-Id"] != received[1][0]["X-Relay-Event-Id"]
        for h, raw in received:
            assert verify("0123456789abcdef0123", h["X-Relay-Timestamp"], raw, h["X-Relay-Signature"],
                          now=time.time())
        await wait_for(lambda: relay.query("SELECT count(*) FROM webhook_outbox") == [(0,)])
    finally:
        await relay.stop()
        if runner is not None:
            await runner.cleanup()
        await up.stop()


BROKEN = """From: news@example.com\r
Subject: Broken\r
X-SES-CONFIGURATION-SET: news\r
MIME-Version: 1.0\r
Content-Type: text/html; charset=utf-8\r
Content-Transfer-Encoding: base64\r
\r
PGh0bWw+PGEgaHJlZj0iaHR0cHM6Ly9leGFtcGxlLmNvbS8iPng8L2E+!!!not base64***\r
"""


async def test_rendering_failure_sends_original_and_records_why(tmp_path: Path) -> None:
    up = await Upstream().start()
    relay = RelayProcess(tmp_path, TRACKED, upstream_url=f"smtp://127.0.0.1:{up.port}")
    try:
        await relay.start()
        await submit(relay.smtp_port, BROKEN, sender="news@example.com", rcpts=RCPTS[:2])
        await wait_for(lambda: up.messages)
        body = BROKEN.split("\r\n\r\n", 1)[1].encode()
        assert all(m.data.endswith(body) for m in up.messages)  # unchanged
        assert sum(len(m.rcpts) for m in up.messages) == 2
        failures = await wait_for(lambda: db_events(relay, "Rendering Failure"))
        assert failures[0][1]["failure"]["errorMessage"]
        assert len(db_events(relay, "Delivery")) == 2
    finally:
        await relay.stop()
        await up.stop()


async def test_set_tracking_domain_and_https_policy(tmp_path: Path) -> None:
    up = await Upstream().start()
    config = TRACKED.replace("[configuration_sets.news]\n", '[configuration_sets.news]\n'
                             'tracking_base_url = "http://click.example.test"\nhttps_policy = "REQUIRE"\n')
    relay = RelayProcess(tmp_path, config, upstream_url=f"smtp://127.0.0.1:{up.port}")
    try:
        await relay.start()
        await submit(relay.smtp_port, HTML_MESSAGE, sender="news@example.com", rcpts=RCPTS[:1])
        await wait_for(lambda: up.messages)
        msg = email.message_from_bytes(up.messages[0].data, policy=policy.default)
        text = "".join(p.get_content() for p in msg.walk() if p.get_content_maintype() == "text")
        assert re.search(r'src="https://click\.example\.test/o/[A-Za-z0-9_-]+"', text)
        assert len(re.findall(r"https://click\.example\.test/c/[A-Za-z0-9_-]+/https:/%2Fshop", text)) == 2
        assert "127.0.0.1" not in text
    finally:
        await relay.stop()
        await up.stop()


async def test_tracked_upstream_down_then_up(tmp_path: Path) -> None:
    port = free_port()
    config = TRACKED.replace('"send", "delivery", "open"', '"send", "delivery", "deliveryDelay", "open"')
    relay = RelayProcess(tmp_path, config, upstream_url=f"smtp://127.0.0.1:{port}")
    up = Upstream(port=port)
    try:
        await relay.start()
        await submit(relay.smtp_port, HTML_MESSAGE, sender="news@example.com", rcpts=RCPTS)
        delays = await wait_for(lambda: len(db_events(relay, "DeliveryDelay")) >= 3 and db_events(relay, "DeliveryDelay"))
        assert {r for r, _ in delays[:3]} == set(RCPTS)
        await up.start()
        await wait_for(lambda: len(up.messages) == 3, 20)
        assert sorted(m.rcpts[0] for m in up.messages) == RCPTS
        assert len({urls_in(m.data)[0][0] for m in up.messages}) == 3  # still one copy each
    finally:
        await relay.stop()
        await up.stop()


async def test_large_tracked_message(tmp_path: Path) -> None:
    up = await Upstream().start()
    relay = RelayProcess(tmp_path, TRACKED, upstream_url=f"smtp://127.0.0.1:{up.port}")
    big = HTML_MESSAGE.replace("<p>Hi</p>", "<p>Hi</p>\r\n" + "<p>filler text for a long newsletter</p>\r\n" * 2000)
    assert len(big) > 64 * 1024
    try:
        await relay.start()
        await submit(relay.smtp_port, big, sender="news@example.com", rcpts=RCPTS[:2])
        await wait_for(lambda: len(up.messages) == 2)
        for m in up.messages:
            pixels, links = urls_in(m.data)
            assert len(pixels) == 1 and len(links) == 2
    finally:
        await relay.stop()
        await up.stop()


async def test_sigterm_flushes_every_recorded_hit(tracked) -> None:
    relay, up, _ = tracked
    pixels, links = urls_in(up.messages[0].data)
    async with aiohttp.ClientSession() as http:
        for _ in range(50):
            async with http.get(pixels[0]) as r:
                assert r.status == 200
            async with http.get(links[0], allow_redirects=False) as r:
                assert r.status == 302
    code = await relay.stop()  # at once: whatever was answered must be on disk
    assert code == 0, relay.output()[-4000:]
    assert len(db_events(relay, "Open")) == 50 and len(db_events(relay, "Click")) == 50
    lines = (relay.tmp / "events.jsonl").read_text().splitlines()
    assert len(lines) == 100
