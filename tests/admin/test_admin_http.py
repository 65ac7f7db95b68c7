# The admin listener over real HTTP against a real `relay serve` that sent and tracked
# known traffic: the JSON API, /metrics parsed by prometheus-client's own parser, the
# preview (the very copy a recipient got), and the token and Host checks.
from __future__ import annotations

import email
import email.policy
import json
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from relay.admin.preview import open_links_outside
from tests.admin import traffic


async def get(url: str, **kw: Any) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as s, s.get(url, allow_redirects=False, **kw) as r:
        return r.status, dict(r.headers), await r.text()


async def get_json(url: str) -> Any:
    status, _, body = await get(url)
    assert status == 200, body
    return json.loads(body)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_api_metrics_and_preview_match_real_traffic(tmp_path: Path) -> None:
    t = await traffic.start(tmp_path)
    try:
        await traffic.send_known_traffic(t)
        await check_api(t)
        await check_metrics(t)
        await check_preview(t)
        # No token on loopback, but only under a loopback name: a page that rebinds its
        # own host name to 127.0.0.1 gets nothing.
        status, _, _ = await get(f"{t.admin}/api/stats", headers={"Host": "evil.example"})
        assert status == 403
        assert (await get(f"{t.admin}/api/stats", headers={"Host": f"localhost:{t.admin_port}"}))[0] == 200
    finally:
        await traffic.stop(t)


async def check_api(t: traffic.Traffic) -> None:
    news = await get_json(f"{t.admin}/api/stats?configuration_set=news&since=24h&by=hour")
    assert set(news) == {"since", "until", "configuration_set", "counts", "recipients", "unique", "rates",
                         "top_links", "link_tags", "series"}
    assert news["configuration_set"] == "news" and news["recipients"] == 3
    assert {k: news["counts"][k] for k in ("send", "delivery", "bounce", "open", "click")} == \
        {"send": 1, "delivery": 2, "bounce": 1, "open": 2, "click": 3}
    assert news["unique"] == {"open": 1, "click": 2} and len(news["series"]) in (24, 25)
    assert sum(b["counts"]["click"] for b in news["series"]) == 3
    everything = await get_json(f"{t.admin}/api/stats?since=24h")
    assert everything["configuration_set"] is None and everything["counts"]["send"] == 3
    no_set = await get_json(f"{t.admin}/api/stats?configuration_set=&since=24h")
    assert no_set["configuration_set"] == "" and no_set["counts"]["send"] == 1
    tagged = await get_json(f"{t.admin}/api/stats?tag=campaign=spring&since=24h")
    assert tagged["counts"]["send"] == 1 and tagged["counts"]["click"] == 3
    for query, fragment in [("since=yesterday", "since"), ("by=week", "by"), ("tag=campaign", "tag"),
                            ("since=1d&until=2d", "before"), ("colour=blue", "unknown parameter")]:
        status, headers, body = await get(f"{t.admin}/api/stats?{query}")
        assert status == 400 and headers["Content-Type"].startswith("application/json"), body
        assert "\n" not in json.loads(body)["error"] and fragment in json.loads(body)["error"]

    clicks = await get_json(f"{t.admin}/api/events?message={t.news_id}&type=click")
    # Several serving processes record hits each in their own commits: compare as a multiset.
    assert sorted(e["record"]["click"]["link"] for e in clicks["events"]) == [
        "https://example.com/shop", "https://example.com/spring?a=1&b=2", "https://example.com/spring?a=1&b=2"]
    assert clicks["after"] == clicks["events"][-1]["seq"]
    later = await get_json(f"{t.admin}/api/events?message={t.news_id}&after={clicks['after']}")
    assert later == {"after": clicks["after"], "events": []}
    assert (await get(f"{t.admin}/api/events?type=nonsense"))[0] == 400

    found = await get_json(f"{t.admin}/api/messages?q=carol")
    assert [m["message_id"] for m in found["messages"]] == [t.plain_id]
    by_set = await get_json(f"{t.admin}/api/messages?q=HOOKS")  # the set's name, any case
    assert [m["message_id"] for m in by_set["messages"]] == [t.hooks_id]
    by_subject = await get_json(f"{t.admin}/api/messages?q=spring%20NEWS")
    assert [m["message_id"] for m in by_subject["messages"]] == [t.news_id]
    doc = await get_json(f"{t.admin}/api/messages/{t.news_id}")
    assert doc["message"]["messageId"] == t.news_id
    assert {r["address"]: r["state"] for r in doc["recipients"]} == {
        "alice@example.org": "delivered", "bob@example.org": "delivered", "nobody@example.org": "bounced"}
    status, _, body = await get(f"{t.admin}/api/messages/no-such-id")
    assert status == 404 and "error" in json.loads(body)


async def check_metrics(t: traffic.Traffic) -> None:
    status, headers, text = await get(f"{t.admin}/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    got = samples(text)

    def value(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    for event_type, n in {"Send": 1, "Delivery": 2, "Bounce": 1, "Open": 2, "Click": 3}.items():
        assert value("relay_events_total", configuration_set="news", event_type=event_type) == n
    assert value("relay_events_total", configuration_set="hooks", event_type="Send") == 1
    assert value("relay_events_total", configuration_set="", event_type="Send") == 1  # mail without a set
    assert value("relay_smtp_transactions_total", result="accepted") == 3
    assert value("relay_smtp_transactions_total", result="rejected") == 0
    assert value("relay_tracking_hits_total", kind="open") == 2
    assert value("relay_tracking_hits_total", kind="click") == 3
    # alice, bob, carol, dave and the DSN to ana delivered; nobody bounced
    assert value("relay_queue_recipients", state="delivered") == 5
    assert value("relay_queue_recipients", state="bounced") == 1
    assert value("relay_queue_recipients", state="pending") == 0
    assert value("relay_webhook_outbox", destination="hooks/hook") >= 1  # its receiver is down
    assert value("relay_webhook_dead_letters", destination="hooks/hook") == 0  # not for 3 days
    attempts = value("relay_delivery_attempt_seconds_count")
    assert attempts >= 4 and value("relay_delivery_attempt_seconds_bucket", le="+Inf") == attempts


async def check_preview(t: traffic.Traffic) -> None:
    doc = await get_json(f"{t.admin}/api/messages/{t.news_id}")
    index = doc["message"]["destination"].index("bob@example.org")
    status, headers, html = await get(f"{t.admin}/messages/{t.news_id}/preview/{index}")
    assert status == 200
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "sandbox allow-popups allow-popups-to-escape-sandbox" in csp
    assert "script-src" not in csp  # default-src 'none': no script at all
    delivered = next(m for m in t.upstream.messages if m.rcpts == ["bob@example.org"])
    msg = email.message_from_bytes(delivered.data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    part = msg.get_body(("html",))
    assert part is not None
    # Byte for byte the HTML bob received (his tokens), plus the <base target=_blank>.
    assert html == open_links_outside(part.get_content())
    assert (await get(f"{t.admin}/messages/{t.news_id}/preview/9"))[0] == 404
    status, _, page = await get(f"{t.admin}/messages/{t.news_id}")
    assert status == 200 and 'sandbox="allow-popups allow-popups-to-escape-sandbox"' in page


async def test_token_guards_every_page_but_login_and_static(tmp_path: Path) -> None:
    t = await traffic.start(tmp_path, token=traffic.TOKEN)
    bearer = {"Authorization": f"Bearer {traffic.TOKEN}"}
    try:
        for path in ("/api/stats", "/api/messages", "/metrics"):
            status, headers, body = await get(t.admin + path)
            assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer") and "error" in json.loads(body)
            assert (await get(t.admin + path, headers={"Authorization": "Bearer wrong-token-0123456789"}))[0] == 401
            assert (await get(t.admin + path, headers=bearer))[0] == 200
        # A person gets the login form, which sets an HttpOnly, SameSite=Strict cookie.
        status, _, page = await get(f"{t.admin}/?since=24h")
        assert status == 401 and 'name="token"' in page and 'value="/?since=24h"' in page
        assert 'action="/logout"' not in page  # nobody to sign out yet
        assert (await get(f"{t.admin}/static/style.css"))[0] == 200
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{t.admin}/login", data={"token": "not the token at all", "next": "/"},
                              allow_redirects=False) as r:
                assert r.status == 401 and "Set-Cookie" not in r.headers
            async with s.post(f"{t.admin}/login", data={"token": traffic.TOKEN, "next": "//evil.example/"},
                              allow_redirects=False) as r:
                assert r.status == 303 and r.headers["Location"] == "/"  # never an open redirect
                cookie = r.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and traffic.TOKEN not in cookie
        value = cookie.split(";", 1)[0]
        status, _, page = await get(f"{t.admin}/", headers={"Cookie": value})
        assert status == 200 and 'id="per-set"' in page and 'action="/logout"' in page
        assert (await get(f"{t.admin}/api/stats", headers={"Cookie": value}))[0] == 200
        assert (await get(f"{t.admin}/", headers={"Cookie": "relay_admin=forged"}))[0] == 401
    finally:
        await traffic.stop(t)
    assert traffic.TOKEN not in t.relay.output()  # never logged
