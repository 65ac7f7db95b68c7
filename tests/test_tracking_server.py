# The tracking server in process, over real HTTP on loopback (its own guarded
# listener), with a real Store: proxies, redirect safety, unknown messages, pruning.
from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import pytest
import yarl

from relay import config as cfg
from relay.events.bus import EventBus
from relay.events.records import MailInfo
from relay.events.sqlite import SqliteDestination
from relay.spool import Job, Spool
from relay.store import Store
from relay.tokens import MAX_LINK_PATH, ClickClaim, OpenClaim, Signer, click_link_fits
from relay.tracking import TrackingServer
from relay.tracking.server import _after_c

CONFIG_SETS = {"news": {"event_destinations": [
    {"name": "db", "type": "sqlite", "matching_event_types": ["open", "click"]}]}}
LISTEN = {"listen": "127.0.0.1:0"}
CONFIG = cfg.parse({"tracking": {**LISTEN, "trusted_proxies": ["127.0.0.1"]}, "configuration_sets": CONFIG_SETS})
SIGNER = Signer([b"k" * 32])


def mail(mid: str, at: float, destination: tuple[str, ...] = ("b@example.org",)) -> MailInfo:
    return MailInfo(message_id=mid, timestamp=datetime.fromtimestamp(at, timezone.utc),
                    source="a@example.com", destination=destination, headers=(),
                    headers_truncated=False, common_headers={}, tags={"ses:configuration-set": ["news"]})


class Client:
    """aiohttp's client against the server's real port (no test-server shortcut)."""

    def __init__(self, server: TrackingServer, session: aiohttp.ClientSession) -> None:
        self.server, self.session = server, session

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.port}{path}"

    async def get(self, path: str, **kw):
        return await self.session.get(self.url(path), **kw)

    async def head(self, path: str, **kw):
        return await self.session.head(self.url(path), **kw)


@pytest.fixture
async def env_for(tmp_path: Path):
    """Start a tracking server for a config, with message m1 spooled; cleaned up after."""
    cleanups = []

    async def start(config: cfg.Config, *, signer: Signer = SIGNER):
        store = Store(str(tmp_path / "relay.db"))
        await store.open()
        cleanups.append(store.close)
        spool = Spool(store)
        bus = EventBus(config.configuration_sets, {("news", "db"): SqliteDestination("news/db")}, store)
        await bus.start()
        cleanups.append(bus.close)
        server = TrackingServer(config=config, signer=signer, spool=spool, bus=bus, store=store)
        await server.start()
        cleanups.append(server.stop)
        session = aiohttp.ClientSession()
        cleanups.append(session.close)
        now = time.time()
        await spool.put(Job(message_id="m1", accepted_at=now, configuration_set="news",
                            mail_from="a@example.com", mail=mail("m1", now, ("a@example.org", "b@example.org")),
                            tracked=True, attempts={"a@example.org": 0, "b@example.org": 0}, data=b"x"))
        return store, spool, Client(server, session), now
    yield start
    for cleanup in reversed(cleanups):
        await cleanup()


@pytest.fixture
async def env(env_for):
    return await env_for(CONFIG)


def click_path(claim: ClickClaim, signer: Signer = SIGNER) -> str:
    return f"/c/{signer.sign_click(claim)}"


async def opens(store: Store) -> list[dict]:
    return [json.loads(b) for (b,) in await store.fetchall(
        "SELECT body FROM events WHERE event_type = 'Open' ORDER BY seq")]


async def test_forwarded_for_only_from_trusted_proxy(env) -> None:
    store, _, client, now = env
    token = SIGNER.sign_open(OpenClaim(message_id="m1", recipient_index=1, sent_at=now))
    # The test client connects from 127.0.0.1, listed in trusted_proxies.
    r = await client.get(f"/o/{token}", headers={"X-Forwarded-For": "198.51.100.7, 127.0.0.1"})
    assert r.status == 200
    events = await wait_opens(store)
    assert events[0]["open"]["ipAddress"] == "198.51.100.7"  # the nearest untrusted hop
    assert events[0]["open"]["recipient"] == "b@example.org"


async def test_forwarded_for_ignored_from_untrusted_peer(env_for) -> None:
    store, _, client, now = await env_for(cfg.parse({"tracking": LISTEN, "configuration_sets": CONFIG_SETS}))
    token = SIGNER.sign_open(OpenClaim(message_id="m1", recipient_index=1, sent_at=now))
    r = await client.get(f"/o/{token}", headers={"X-Forwarded-For": "198.51.100.7"})
    assert r.status == 200
    events = await wait_opens(store)
    assert events[0]["open"]["ipAddress"] == "127.0.0.1"


async def wait_opens(store: Store, n: int = 1) -> list[dict]:
    for _ in range(200):
        events = await opens(store)
        if len(events) >= n:
            return events
        await asyncio.sleep(0.02)
    raise AssertionError("no open recorded")


@pytest.mark.parametrize("url", ["javascript:alert(1)", "//evil.example/", "mailto:x@example.com", "data:text/html,x"])
async def test_never_redirects_outside_http(env, url: str) -> None:
    _, _, client, now = env
    path = click_path(ClickClaim(message_id="m1", recipient_index=0, sent_at=now, url=url, link_tags={}))
    r = await client.get(path, allow_redirects=False)
    assert r.status == 404 and "Location" not in r.headers


async def test_token_from_another_secret_is_404(env) -> None:
    _, _, client, now = env
    other = click_path(ClickClaim(message_id="m1", recipient_index=0, sent_at=now, url="https://example.com/",
                                  link_tags={}), Signer([b"z" * 32]))
    r = await client.get(other, allow_redirects=False)
    assert r.status == 404


async def test_unknown_message_still_served_not_recorded(env) -> None:
    store, _, client, now = env
    path = click_path(ClickClaim(message_id="gone", recipient_index=0, sent_at=now,
                                 url="https://example.com/x", link_tags={}))
    r = await client.get(path, allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "https://example.com/x"
    await asyncio.sleep(0.2)
    assert await store.fetchall("SELECT count(*) FROM events") == [(0,)]


async def test_prune_forgets_finished_old_messages_only(env) -> None:
    store, spool, _, now = env
    old = now - 100 * 86400
    for mid, state in (("old-done", "delivered"), ("old-pending", "pending")):
        await spool.put(Job(message_id=mid, accepted_at=old, configuration_set="news", mail_from="a@example.com",
                            mail=mail(mid, old), tracked=False, attempts={"b@example.org": 0}, data=b"x"))
        await store.write([("UPDATE recipients SET state = ? WHERE message_id = ?", (state, mid))])
    await spool.prune(now - 60 * 86400)
    rows = await store.fetchall("SELECT id FROM messages ORDER BY id")
    assert rows == [("m1",), ("old-pending",)]
    assert await store.fetchall("SELECT message_id FROM recipients WHERE message_id LIKE 'old%'") == [("old-pending",)]


async def test_store_batch_isolates_a_failing_caller(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s.db"))
    await store.open()
    try:
        good = [store.write_nowait([("INSERT INTO settings(key, value) VALUES (?, ?)", (f"k{i}", "v"))])
                for i in range(5)]
        bad = store.write_nowait([("INSERT INTO settings(key, value) VALUES (?, ?)", ("k0", "dup"))])
        results = await asyncio.gather(*good, bad, return_exceptions=True)
        assert results[:5] == [None] * 5 and isinstance(results[5], Exception)
        assert await store.fetchall("SELECT count(*) FROM settings") == [(5,)]
    finally:
        await store.close()


async def clicks(store: Store) -> list[dict]:
    return [json.loads(b) for (b,) in await store.fetchall(
        "SELECT body FROM events WHERE event_type = 'Click' ORDER BY seq")]


async def settle(server: TrackingServer) -> None:
    """Every hit answered so far is recorded and committed."""
    await server.recorder.drain()


async def test_click_maps_the_index_to_the_recipient(env) -> None:
    store, _, client, now = env
    for index in (0, 1):
        path = click_path(ClickClaim("m1", index, now, "https://example.com/a", {"k": ["v"]}))
        r = await client.get(path, allow_redirects=False)
        assert r.status == 302 and r.headers["Location"] == "https://example.com/a"
    await settle(client.server)
    events = await wait_clicks(store, 2)
    assert [e["click"]["recipient"] for e in events] == ["a@example.org", "b@example.org"]
    assert events[0]["click"]["linkTags"] == {"k": ["v"]}


async def wait_clicks(store: Store, n: int) -> list[dict]:
    for _ in range(200):
        events = await clicks(store)
        if len(events) >= n:
            return events
        await asyncio.sleep(0.02)
    raise AssertionError("no click recorded")


async def test_index_out_of_range_is_served_not_recorded(env, caplog: pytest.LogCaptureFixture) -> None:
    store, _, client, now = env
    for _ in range(3):
        r = await client.get(click_path(ClickClaim("m1", 7, now, "https://example.com/", {})), allow_redirects=False)
        assert r.status == 302 and r.headers["Location"] == "https://example.com/"
        r = await client.get(f"/o/{SIGNER.sign_open(OpenClaim('m1', 2, now))}")
        assert r.status == 200
    await settle(client.server)
    assert await store.fetchall("SELECT count(*) FROM events") == [(0,)]
    assert len([rec for rec in caplog.records if "names recipient #" in rec.message]) == 1  # once, not per hit


@pytest.mark.parametrize(("url", "location"), [
    # characters encoded in the href stay encoded
    ("https://example.com/a%2Fb/c?next=%2Fhome%3Fx%3D1&y=%25#frag",) * 2,
    ("https://example.com//double//slashes/./and/../dots/",) * 2,
    ("https://en.example.org/wiki/Foo_(bar)",) * 2,
    ("http://example.com:8080/;p=1?a=1;b=2",) * 2,
    # not a URI (the instrumentation tracks none such): Location gets a valid one
    ("https://example.com/a b/\u00e9?q=\u00fc&r=1+2", "https://example.com/a%20b/%C3%A9?q=%C3%BC&r=1+2"),
])
async def test_the_destination_survives_the_path_byte_for_byte(env, url: str, location: str) -> None:
    store, _, client, now = env
    path = click_path(ClickClaim("m1", 0, now, url, {}))
    # aiohttp's client sends the path as is (encoded=True): what a browser sends for this href
    r = await client.session.get(yarl_url(client.url(path)), allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == location
    await settle(client.server)
    assert (await wait_clicks(store, 1))[0]["click"]["link"] == url


def yarl_url(url: str) -> yarl.URL:
    return yarl.URL(url, encoded=True)


async def test_a_query_added_on_the_way_is_ignored(env) -> None:
    _, _, client, now = env
    path = click_path(ClickClaim("m1", 0, now, "https://example.com/p?a=1", {}))
    r = await client.session.get(yarl_url(client.url(path + "?fbclid=XYZ")), allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "https://example.com/p?a=1"


async def test_head_answers_like_get_but_records_nothing(env) -> None:
    store, _, client, now = env
    open_path = f"/o/{SIGNER.sign_open(OpenClaim('m1', 0, now))}"
    link = click_path(ClickClaim("m1", 0, now, "https://example.com/", {}))
    r = await client.head(open_path)
    assert r.status == 200 and r.headers["Content-Type"] == "image/gif" and r.headers["Content-Length"] == "42"
    assert "no-store" in r.headers["Cache-Control"]
    r = await client.head(link, allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "https://example.com/"
    await settle(client.server)
    assert await store.fetchall("SELECT count(*) FROM events") == [(0,)]
    r = await client.get(open_path)
    assert r.status == 200
    await settle(client.server)
    assert len(await wait_opens(store)) == 1  # the GET is recorded


# Produced by relay's v1 code (commit 7fff5d9) with this secret; already in mailboxes.
V1_SECRET = b"legacy-secret-0123456789abcdef"
V1_MID = "018f3b2a4c1d0000-5d2e7c41-9a0b-4c3d-8e1f-2a3b4c5d6e7f-000000"
V1_CLICK = ("AjWMQQuCMBhA_8t36OR0c845QQrCP1DdxMPcPjPSJm5SEP33Quhd3uXxGqCs6HmX6swwS38QYVOUJmNEadqRzHBLCmQ9STXvMiNsjrIndAMi"
            "0OPNYOzRLBgO-NLTPGLslitETCqhpCikimUewRDC7Msk-TfGTckTx59wv3pcqu20C-6Oj-pcH0_1haUcojfMi7OrCVA24AeHHtpP-wUX6nn07WGKJd"
            "fgXXPgH7kP")
V1_OPEN = ("Ah3BOw7DIAwA0LswxwjzM2y5R9XBGFNFImqVZOjxW-W9h3FYRmieo2B3f5C6V5KIUNk1iBI6FMUBnkOLknpWGuBuZjE8N1F7qhx6rfrl_TPVvo-"
           "XWZBqqpQKVUv5-QPMNxPegd2a3b1uU3dmZZ5s")


async def test_v1_links_already_mailed_keep_redirecting_and_recording(env_for) -> None:
    config = cfg.parse({"tracking": {**LISTEN, "window_days": 36500}, "configuration_sets": CONFIG_SETS})
    store, spool, client, _ = await env_for(config, signer=Signer([b"n" * 32, V1_SECRET]))
    at = 1795975879.76
    await spool.put(Job(message_id=V1_MID, accepted_at=at, configuration_set="news", mail_from="a@example.com",
                        mail=mail(V1_MID, at, ("alice.secret@example.org",)), tracked=True,
                        attempts={"alice.secret@example.org": 0}, data=b"x"))
    r = await client.get(f"/c/{V1_CLICK}", allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "https://example.com/welcome?user=alice&token=SECRET123"
    r = await client.get(f"/o/{V1_OPEN}")
    assert r.status == 200 and (await r.read()).startswith(b"GIF89a")
    await settle(client.server)
    click = (await wait_clicks(store, 1))[0]["click"]
    assert click["recipient"] == "alice.secret@example.org" and click["linkTags"] == {"product": ["shoes"]}
    assert (await wait_opens(store))[0]["open"]["recipient"] == "alice.secret@example.org"
    # a v1 token is not accepted in the v2 shape, nor with a trailing slash
    for bad in (f"/c/{V1_CLICK}/https:/%2Fexample.com/", f"/c/{V1_CLICK}/"):
        r = await client.get(bad, allow_redirects=False)
        assert r.status == 404


async def test_longest_link_that_fits_is_served(env) -> None:
    _, _, client, now = env
    tags = {"product": ["shoes"]}
    # the longest URL with a percent-encoded character every 10 that click_link_fits lets through
    unit = "abcdefghi "
    lo, hi = 0, MAX_LINK_PATH
    while lo < hi:  # bounded binary search
        mid = (lo + hi + 1) // 2
        if click_link_fits("https://example.com/?q=" + (unit * 1000)[:mid], tags):
            lo = mid
        else:
            hi = mid - 1
    url = "https://example.com/?q=" + (unit * 1000)[:lo]
    longer = "https://example.com/?q=" + (unit * 1000)[: lo + 1]
    assert not click_link_fits(longer, tags)
    # worst case of the format: the largest index and an explicit sent_at
    path = click_path(ClickClaim("0102018f3b2a4c1d-5d2e7c41-9a0b-4c3d-8e1f-2a3b4c5d6e7f-000000", (1 << 21) - 1,
                                 now, url, tags))
    assert MAX_LINK_PATH - 3 <= len(path) <= MAX_LINK_PATH
    for method in ("GET", "HEAD"):
        r = await client.session.request(method, yarl_url(client.url(path)), allow_redirects=False)
        assert r.status == 302 and r.headers["Location"] == url.replace(" ", "%20")


async def test_healthz_reports_an_unusable_store(env) -> None:
    store, _, client, _ = env
    r = await client.get("/healthz")
    assert r.status == 200 and await r.text() == "ok\n"
    # The file becomes read-only under the writer (as root, chmod would not stop us).
    assert store._writer is not None  # noqa: SLF001 - the test reaches into the store on purpose
    await store._in_writer(store._writer.execute, "PRAGMA query_only = ON")  # noqa: SLF001
    with pytest.raises(Exception, match="readonly"):
        await store.write([("INSERT INTO settings(key, value) VALUES ('x', 'y')", ())])
    r = await client.get("/healthz")
    body = await r.text()
    assert r.status == 503 and body.startswith("unavailable: storage: ") and "readonly" in body
    assert body.count("\n") == 1 and r.headers["Cache-Control"] == "no-store"
    await store._in_writer(store._writer.execute, "PRAGMA query_only = OFF")  # noqa: SLF001
    await store.write([("INSERT INTO settings(key, value) VALUES ('x', 'y')", ())])
    r = await client.get("/healthz")
    assert r.status == 200


async def test_healthz_reports_recovery_without_waiting_for_traffic(env) -> None:
    # Behind a load balancer that follows /healthz, a 503 that lasted until the next
    # message or hit would last for ever (no hit is routed to an unhealthy server).
    store, _, client, _ = env
    assert store._writer is not None  # noqa: SLF001 - the test reaches into the store on purpose
    await store._in_writer(store._writer.execute, "PRAGMA query_only = ON")  # noqa: SLF001
    with pytest.raises(Exception, match="readonly"):
        await store.write([("INSERT INTO settings(key, value) VALUES ('x', 'y')", ())])
    r = await client.get("/healthz")
    assert r.status == 503  # each probe tries the storage again, and it still refuses
    await store._in_writer(store._writer.execute, "PRAGMA query_only = OFF")  # noqa: SLF001
    r = await client.get("/healthz")  # no write of anyone else's in between
    assert r.status == 200 and await r.text() == "ok\n"


@pytest.mark.parametrize(("raw", "rest"), [
    ("/c/TOKEN/https:/%2Fx.test/", "TOKEN/https:/%2Fx.test/"),
    ("/c/TOKEN/https:/%2Fx.test/?utm=added", "TOKEN/https:/%2Fx.test/"),
    ("http://t.example/c/TOKEN/https:/%2Fx.test/", "TOKEN/https:/%2Fx.test/"),  # absolute-form, from a proxy
    ("/c/TOKEN", "TOKEN"),
    ("/o/TOKEN", ""),
    ("http://t.example", ""),
])
def test_what_follows_c_in_the_request_target(raw: str, rest: str) -> None:
    assert _after_c(raw) == rest


async def test_a_burst_of_hits_is_recorded_completely(env) -> None:
    """Hits queue for the one recorder task, which drains them in chunks: none is lost."""
    store, _, client, now = env
    pixel = f"/o/{SIGNER.sign_open(OpenClaim('m1', 0, now))}"
    link = click_path(ClickClaim("m1", 1, now, "https://example.com/burst", {}))

    async def one(i: int) -> int:
        r = await (client.get(pixel) if i % 2 else client.get(link, allow_redirects=False))
        await r.read()
        return r.status

    statuses = await asyncio.gather(*(one(i) for i in range(400)))
    assert sorted(set(statuses)) == [200, 302]
    await settle(client.server)
    await client.server.recorder.drain()  # a second drain with nothing queued returns at once
    events = await wait_clicks(store, 200)
    assert len(events) == 200 and len(await wait_opens(store, 200)) == 200
    assert {e["click"]["recipient"] for e in events} == {"b@example.org"}


async def test_a_recording_failure_does_not_affect_serving(env, caplog) -> None:
    store, spool, client, now = env
    real_mail = spool.mail

    async def flaky(message_id: str):
        if message_id == "boom":
            raise RuntimeError("storage hiccup")
        return await real_mail(message_id)

    client.server.recorder._spool.mail = flaky  # type: ignore[method-assign]
    bad = f"/o/{SIGNER.sign_open(OpenClaim('boom', 0, now))}"
    good = f"/o/{SIGNER.sign_open(OpenClaim('m1', 0, now))}"
    for path in (bad, good, bad, good):
        r = await client.get(path)
        assert r.status == 200 and await r.read()
    await settle(client.server)
    assert len(await wait_opens(store, 2)) == 2
    assert "could not record a hit for boom" in caplog.text
