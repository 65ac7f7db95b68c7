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
        bus = EventBus(config.configuration_sets, {("news", "db"): SqliteDestination("news/db", store)})
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
