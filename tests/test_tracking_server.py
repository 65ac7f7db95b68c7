# The tracking server in process, over real HTTP (aiohttp's test server on
# loopback), with a real Store: proxies, redirect safety, unknown messages, pruning.
from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from relay import config as cfg
from relay.events.bus import EventBus
from relay.events.records import MailInfo
from relay.events.sqlite import SqliteDestination
from relay.spool import Job, Spool
from relay.store import Store
from relay.tokens import ClickClaim, OpenClaim, Signer
from relay.tracking import TrackingServer

CONFIG_SETS = {"news": {"event_destinations": [
    {"name": "db", "type": "sqlite", "matching_event_types": ["open", "click"]}]}}
CONFIG = cfg.parse({"tracking": {"trusted_proxies": ["127.0.0.1"]}, "configuration_sets": CONFIG_SETS})
SIGNER = Signer([b"k" * 32])


def mail(mid: str, at: float) -> MailInfo:
    return MailInfo(message_id=mid, timestamp=datetime.fromtimestamp(at, timezone.utc),
                    source="a@example.com", destination=("b@example.org",), headers=(),
                    headers_truncated=False, common_headers={}, tags={"ses:configuration-set": ["news"]})


@pytest.fixture
async def env_for(tmp_path: Path):
    """Start a tracking server for a config, with message m1 spooled; cleaned up after."""
    cleanups = []

    async def start(config: cfg.Config):
        store = Store(str(tmp_path / "relay.db"))
        await store.open()
        spool = Spool(store)
        bus = EventBus(config.configuration_sets, {("news", "db"): SqliteDestination("news/db")}, store)
        await bus.start()
        server = TrackingServer(config=config, signer=SIGNER, spool=spool, bus=bus)
        client = TestClient(TestServer(server.app, host="127.0.0.1"))
        await client.start_server()
        cleanups.extend([client.close, server.stop, bus.close, store.close])
        now = time.time()
        await spool.put(Job(message_id="m1", accepted_at=now, configuration_set="news",
                            mail_from="a@example.com", mail=mail("m1", now), tracked=True,
                            attempts={"b@example.org": 0}, data=b"x"))
        return store, spool, client, now
    yield start
    for cleanup in cleanups:
        await cleanup()


@pytest.fixture
async def env(env_for):
    return await env_for(CONFIG)


async def opens(store: Store) -> list[dict]:
    return [json.loads(b) for (b,) in await store.fetchall(
        "SELECT body FROM events WHERE event_type = 'Open' ORDER BY seq")]


async def test_forwarded_for_only_from_trusted_proxy(env) -> None:
    store, _, client, now = env
    token = SIGNER.sign_open(OpenClaim(message_id="m1", recipient="b@example.org", sent_at=now))
    # The test client connects from 127.0.0.1, listed in trusted_proxies.
    r = await client.get(f"/o/{token}", headers={"X-Forwarded-For": "198.51.100.7, 127.0.0.1"})
    assert r.status == 200
    events = await wait_opens(store)
    assert events[0]["open"]["ipAddress"] == "198.51.100.7"  # the nearest untrusted hop
    assert events[0]["open"]["recipient"] == "b@example.org"


async def test_forwarded_for_ignored_from_untrusted_peer(env_for) -> None:
    store, _, client, now = await env_for(cfg.parse({"configuration_sets": CONFIG_SETS}))
    token = SIGNER.sign_open(OpenClaim(message_id="m1", recipient="b@example.org", sent_at=now))
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
    token = SIGNER.sign_click(ClickClaim(message_id="m1", recipient="b@example.org", sent_at=now,
                                         url=url, link_tags={}))
    r = await client.get(f"/c/{token}", allow_redirects=False)
    assert r.status == 404 and "Location" not in r.headers


async def test_token_from_another_secret_is_404(env) -> None:
    _, _, client, now = env
    other = Signer([b"z" * 32]).sign_click(ClickClaim(message_id="m1", recipient="b@example.org",
                                                      sent_at=now, url="https://example.com/", link_tags={}))
    r = await client.get(f"/c/{other}", allow_redirects=False)
    assert r.status == 404


async def test_unknown_message_still_served_not_recorded(env) -> None:
    store, _, client, now = env
    token = SIGNER.sign_click(ClickClaim(message_id="gone", recipient="b@example.org", sent_at=now,
                                         url="https://example.com/x", link_tags={}))
    r = await client.get(f"/c/{token}", allow_redirects=False)
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
