# Known traffic through a real `relay serve` with the admin listener on: several sets
# (one with only a webhook destination), mail with no set, tags, a 5xx recipient,
# and opens and clicks made with real HTTP requests on the links in the delivered copies.
from __future__ import annotations

import asyncio
import email
import email.policy
import json
import re
import urllib.request
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib

from tests.support import Capture, RelayProcess, Upstream, free_port, port_open, wait_for

TOKEN = "admin-token-0123456789abcdef"

SETS = """
[configuration_sets.news]
[[configuration_sets.news.event_destinations]]
name = "db"
type = "sqlite"
matching_event_types = ["send", "delivery", "bounce", "deliveryDelay", "reject", "open", "click", "renderingFailure"]

[configuration_sets.hooks]
[[configuration_sets.hooks.event_destinations]]
name = "hook"
type = "webhook"
url = "http://127.0.0.1:{dead_port}/events"
matching_event_types = ["send", "delivery", "open", "click"]
"""

NEWS_HTML = (
    '<html><head><title>Spring</title></head><body><h1>Spring news</h1>'
    '<p><a href="https://example.com/spring?a=1&amp;b=2" ses:tags="campaign:spring;slot:top">Read the news</a></p>'
    '<p><a href="https://example.com/shop">Visit the shop</a></p></body></html>'
)


@dataclass
class Traffic:
    relay: RelayProcess
    upstream: Upstream
    admin_port: int
    news_id: str = ""
    plain_id: str = ""
    hooks_id: str = ""
    links: dict[str, list[str]] = field(default_factory=dict)  # recipient -> click URLs in the copy
    pixels: dict[str, str] = field(default_factory=dict)  # recipient -> pixel URL

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def events(self, event_type: str) -> list[dict]:
        return [json.loads(b) for (b,) in self.relay.query(
            "SELECT body FROM events WHERE event_type = ? ORDER BY seq", (event_type,))]


def admin_section(port: int, token: str | None = None) -> str:
    return f'[admin]\nlisten = "127.0.0.1:{port}"\n' + (f'token = "{token}"\n' if token else "")


async def start(tmp: Path, *, token: str | None = None) -> Traffic:
    upstream = await Upstream(Capture(rcpt_replies={"nobody@example.org": "550 5.1.1 user unknown"})).start()
    admin_port = free_port()
    relay = RelayProcess(tmp, admin_section(admin_port, token) + SETS.format(dead_port=free_port()),
                         upstream_url=f"smtp://127.0.0.1:{upstream.port}")
    try:
        await relay.start()
        await wait_for(lambda: port_open(admin_port), 20)
    except BaseException:
        await relay.stop()
        await upstream.stop()
        raise
    return Traffic(relay, upstream, admin_port)


async def stop(traffic: Traffic) -> None:
    await traffic.relay.stop()
    await traffic.upstream.stop()


async def submit(port: int, msg: EmailMessage, rcpts: list[str]) -> str:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=20) as client:
        _, reply = await client.sendmail("ana@example.com", rcpts, msg.as_bytes())
    return reply.split()[1]  # "Ok <message id>"


def _message(subject: str, *, cset: str | None, tags: str | None = None, html: str | None = None,
             text: str = "Hello") -> EmailMessage:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "Ana <ana@example.com>", "list@example.org", subject
    if cset:
        m["X-SES-CONFIGURATION-SET"] = cset
    if tags:
        m["X-SES-MESSAGE-TAGS"] = tags
    m.set_content(text)
    if html:
        m.add_alternative(html, subtype="html")
    return m


def hit(url: str, user_agent: str = "TestBrowser/1.0") -> int:
    """A GET on a tracking URL, as a mail client would (redirects not followed)."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None
    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, headers={"User-Agent": user_agent})
    try:
        with opener.open(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def tracking_urls(data: bytes) -> tuple[list[str], str | None]:
    """The click links (document order) and the pixel of a delivered copy's HTML part."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    part = msg.get_body(("html",))
    assert part is not None
    html = part.get_content()
    links = [u.replace("&amp;", "&") for u in re.findall(r'href="(http://127\.0\.0\.1:\d+/c/[^"]+)"', html)]
    pixel = re.search(r'src="(http://127\.0\.0\.1:\d+/o/[^"]+)"', html)
    return links, pixel.group(1) if pixel else None


async def send_known_traffic(t: Traffic) -> None:
    """news: alice, bob (tracked), nobody (550); no set: carol; hooks: dave. Then
    alice opens twice and clicks the first link twice, bob clicks the second link once."""
    t.news_id = await submit(t.relay.smtp_port, _message("Spring news", cset="news", tags="campaign=spring",
                                                         html=NEWS_HTML, text="Spring news: https://example.com/spring"),
                             ["alice@example.org", "bob@example.org", "nobody@example.org"])
    t.plain_id = await submit(t.relay.smtp_port, _message("Plain note", cset=None), ["carol@example.org"])
    t.hooks_id = await submit(t.relay.smtp_port, _message("Hooked", cset="hooks"), ["dave@example.org"])
    # alice, bob, carol, dave and the DSN to ana for nobody's 550, each outcome recorded
    await wait_for(lambda: len(t.upstream.messages) >= 5, 30)
    await wait_for(lambda: t.relay.query("SELECT count(*) FROM recipients WHERE state != 'pending'") == [(6,)], 30)
    for received in t.upstream.messages:
        if received.rcpts[0] in ("alice@example.org", "bob@example.org"):
            links, pixel = tracking_urls(received.data)
            t.links[received.rcpts[0]] = links
            assert pixel is not None
            t.pixels[received.rcpts[0]] = pixel
    assert len(t.links["alice@example.org"]) == 2 and len(t.links["bob@example.org"]) == 2
    loop = asyncio.get_running_loop()
    for url, ua in [(t.pixels["alice@example.org"], "AliceMail/1.0"), (t.pixels["alice@example.org"], "AliceMail/1.0"),
                    (t.links["alice@example.org"][0], "AliceMail/1.0"), (t.links["alice@example.org"][0], "AliceMail/1.0"),
                    (t.links["bob@example.org"][1], "BobMail/2.0")]:
        assert await loop.run_in_executor(None, hit, url, ua) in (200, 302)
    await wait_for(lambda: len(t.events("Click")) >= 3 and len(t.events("Open")) >= 2, 20)
