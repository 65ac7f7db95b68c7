# Delivery when things break inside relay: an exception while sending one copy, an
# address the upstream library refuses, a commit that fails after the upstream
# accepted. Real aiosmtpd upstream on loopback, a real SQLite file; the one seam is
# the Upstream protocol, wrapped to raise where a future bug might.
from __future__ import annotations

import asyncio
import dataclasses
import email
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

import aiosmtplib
import pytest

from relay import config as cfg
from relay.delivery import Deliverer, Schedule
from relay.events import records
from relay.events.bus import EventBus
from relay.events.sqlite import SqliteDestination
from relay.intake import new_message_id
from relay.spool import Job, Spool
from relay.store import Store
from relay.tokens import Signer
from relay.upstream import SmtpUpstream
from tests.support import Capture, Upstream, wait_for

MESSAGE = (b"From: a@example.com\r\nTo: list@example.org\r\nSubject: hi\r\n"
           b"Content-Type: text/html\r\n\r\n<html><body><a href=\"https://example.com/x\">x</a></body></html>\r\n")


def make_config(tmp_path: Path, port: int, *, max_delivery_seconds: float = 30.0) -> cfg.Config:
    return cfg.parse({
        "storage": {"path": str(tmp_path / "relay.db")},
        "upstream": {"url": f"smtp://127.0.0.1:{port}", "connections": 2, "timeout": 5,
                     "retry_first_delay": 0.1, "retry_max_delay": 0.2,
                     "max_delivery_seconds": max_delivery_seconds},
        "configuration_sets": {"news": {"event_destinations": [
            {"name": "db", "type": "sqlite",
             "matching_event_types": ["send", "delivery", "bounce", "deliveryDelay", "open", "click"]}]}},
    })


class Env:
    def __init__(self, config: cfg.Config, upstream: SmtpUpstream, store: Store) -> None:
        self.config = config
        self.store = store
        self.spool = Spool(store)
        self.upstream = upstream
        self.bus = EventBus(config.configuration_sets, {("news", "db"): SqliteDestination("news/db")}, store)
        self.schedule = Schedule()
        self.deliverer = Deliverer(config=config, spool=self.spool, upstream=upstream, bus=self.bus,
                                   signer=Signer([b"test-secret-0123456789"]), schedule=self.schedule)

    async def submit(self, rcpts: list[str], *, tracked: bool = True) -> str:
        now = time.time()
        mid = new_message_id(now)
        mail = records.mail_info(message_id=mid, timestamp=datetime.fromtimestamp(now, timezone.utc),
                                 source="a@example.com", destination=rcpts, header_block=MESSAGE,
                                 configuration_set="news", message_tags={}, source_ip="127.0.0.1",
                                 caller_identity=None)
        job = Job(message_id=mid, accepted_at=now, configuration_set="news", mail_from="a@example.com",
                  mail=mail, tracked=tracked, attempts=dict.fromkeys(rcpts, 0), due=now, data=MESSAGE)
        await self.spool.put(job)
        self.schedule.add(job)
        return mid

    async def states(self, mid: str) -> dict[str, str]:
        rows = await self.store.fetchall("SELECT recipient, state FROM recipients WHERE message_id = ?", (mid,))
        return dict(rows)  # type: ignore[arg-type]

    async def events(self, event_type: str) -> list[dict[str, Any]]:
        rows = await self.store.fetchall("SELECT body FROM events WHERE event_type = ? ORDER BY seq", (event_type,))
        return [json.loads(body) for (body,) in rows]


class Exploding(SmtpUpstream):
    """The real pooled upstream, but one recipient's transaction raises mid-way (after
    MAIL FROM), as an unforeseen bug in a library would."""

    def __init__(self, *args: Any, victim: str, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.victim = victim
        self.explosions = 0

    async def _transaction(self, client: aiosmtplib.SMTP, mail_from: str,
                           recipients: Sequence[str], data: bytes) -> Any:
        if self.victim in recipients:
            await client.mail(mail_from)
            self.explosions += 1
            raise RuntimeError("boom")
        return await super()._transaction(client, mail_from, recipients, data)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = await Upstream().start()
    yield up
    await up.stop()


async def running(env: Env) -> None:
    await env.bus.start()
    env.deliverer.start(env.config.upstream.connections)


async def settled(env: Env, mid: str, timeout: float = 15) -> dict[str, str]:
    """The recipients' states once none is pending (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and "pending" in (await env.states(mid)).values():
        await asyncio.sleep(0.05)
    return await env.states(mid)


async def stopped(env: Env) -> None:
    await env.deliverer.stop(timeout=5)
    await env.bus.close()
    await env.upstream.close()


# The first copy is also the probe for an unreachable upstream (its failure defers the
# rest); a failure inside relay is that copy's alone, wherever it sits (#7).
@pytest.mark.parametrize("rcpts", [["ok1@example.org", "boom@example.org", "ok2@example.org"],
                                   ["boom@example.org", "ok1@example.org", "ok2@example.org"]],
                         ids=["exploding-second", "exploding-first"])
async def test_an_exception_in_one_copy_defers_then_bounces_it_and_never_resends_the_others(
        tmp_path: Path, upstream: Upstream, store: Store, rcpts: list[str]) -> None:
    config = make_config(tmp_path, upstream.port, max_delivery_seconds=1.5)
    exploding = Exploding(config.upstream, local_hostname="relay.test", victim="boom@example.org")
    env = Env(config, exploding, store)
    await running(env)
    try:
        mid = await env.submit(rcpts)
        assert await settled(env, mid) == {"ok1@example.org": "delivered", "boom@example.org": "bounced",
                                           "ok2@example.org": "delivered"}
        assert exploding.explosions >= 2  # it was retried ...
        copies = sorted(r for m in upstream.messages if m.mail_from != "<>" for r in m.rcpts)
        assert copies == ["ok1@example.org", "ok2@example.org"]  # ... and the others got one copy each
        # The DSN is spooled with the bounce and delivered right after it: wait for it.
        await wait_for(lambda: any(m.mail_from == "<>" for m in upstream.messages))
        await asyncio.sleep(0.2)  # and no second one
        dsns = [m for m in upstream.messages if m.mail_from == "<>"]
        assert [m.rcpts for m in dsns] == [["a@example.com"]]  # the sender hears of the bounce once
        delays = await env.events("DeliveryDelay")
        assert delays and all(d["deliveryDelay"]["delayedRecipients"][0]["emailAddress"] == "boom@example.org"
                              for d in delays)
        assert "RuntimeError" in delays[0]["deliveryDelay"]["delayedRecipients"][0]["diagnosticCode"]
        bounce, = await env.events("Bounce")
        assert bounce["bounce"]["bounceType"] == "Transient"
        assert bounce["bounce"]["bouncedRecipients"][0]["emailAddress"] == "boom@example.org"
        # Every connection left mid-transaction was closed, not leaked or reused.
        await wait_for(lambda: upstream.open_connections <= config.upstream.connections, 5)
    finally:
        await stopped(env)


async def test_control_character_address_is_an_outcome_and_closes_the_connection(
        tmp_path: Path, upstream: Upstream) -> None:
    config = make_config(tmp_path, upstream.port)
    up = SmtpUpstream(config.upstream, local_hostname="relay.test")
    try:
        replies = await up.send("a@example.com", ["bad\x7fx@example.org"], MESSAGE)
        reply = replies["bad\x7fx@example.org"]
        assert reply.code == 0 and "ValueError" in reply.message  # aiosmtplib refuses to send it
        await wait_for(lambda: upstream.open_connections == 0, 5)  # not left open or pooled
        ok = await up.send("a@example.com", ["fine@example.org"], MESSAGE)
        assert ok["fine@example.org"].code == 250
    finally:
        await up.close()


async def test_a_failed_commit_records_the_replies_later_without_sending_again(
        tmp_path: Path, upstream: Upstream, store: Store) -> None:
    config = make_config(tmp_path, upstream.port)
    env = Env(config, SmtpUpstream(config.upstream, local_hostname="relay.test"), store)
    rcpts = ["r1@example.org", "r2@example.org"]
    mid = await env.submit(rcpts)
    # The database refuses writes (as on a full or read-only disk) while the copies go out.
    assert store._writer is not None
    await store._in_writer(store._writer.execute, "PRAGMA query_only = 1")
    await running(env)
    try:
        await wait_for(lambda: len(upstream.messages) == 2, 10)
        await asyncio.sleep(0.6)  # several failed attempts to record the outcome
        assert set((await env.states(mid)).values()) == {"pending"}
        assert store.last_error is not None and "readonly" in store.last_error
        await store._in_writer(store._writer.execute, "PRAGMA query_only = 0")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and set((await env.states(mid)).values()) != {"delivered"}:
            await asyncio.sleep(0.05)
        assert set((await env.states(mid)).values()) == {"delivered"}
        assert len(upstream.messages) == 2  # recorded, never re-sent
        assert sorted(e["delivery"]["recipients"][0] for e in await env.events("Delivery")) == rcpts
        assert store.last_error is None
    finally:
        await stopped(env)


class SlowToAnswer(Capture):
    """An upstream that takes a while to answer the final dot (it is writing to disk, say)."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(self.delay)
        return await super().handle_DATA(server, session, envelope)


async def test_a_slow_reply_to_the_final_dot_is_awaited_so_nobody_gets_two_copies(
        tmp_path: Path, store: Store) -> None:
    slow = await Upstream(SlowToAnswer(delay=1.0)).start()
    base = make_config(tmp_path, slow.port)
    # Other replies must come within 0.3 s; the one after the data gets its own, longer wait.
    config = dataclasses.replace(base, upstream=dataclasses.replace(base.upstream, timeout=0.3, data_timeout=5.0))
    env = Env(config, SmtpUpstream(config.upstream, local_hostname="relay.test"), store)
    await running(env)
    try:
        rcpts = [f"r{n}@example.org" for n in range(4)]
        mid = await env.submit(rcpts)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and set((await env.states(mid)).values()) != {"delivered"}:
            await asyncio.sleep(0.05)
        assert set((await env.states(mid)).values()) == {"delivered"}
        assert sorted(r for m in slow.messages for r in m.rcpts) == rcpts  # one copy each
        assert await env.events("DeliveryDelay") == []
    finally:
        await stopped(env)
        await slow.stop()


async def test_a_link_too_long_to_track_goes_out_untouched_with_a_log_line(
        tmp_path: Path, upstream: Upstream, store: Store, caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(tmp_path, upstream.port)
    env = Env(config, SmtpUpstream(config.upstream, local_hostname="relay.test"), store)
    long_url = "https://example.com/p?" + "&".join(f"k{n}=v{n}" for n in range(1000))[:9000]
    global MESSAGE
    saved = MESSAGE
    MESSAGE = (b"From: a@example.com\r\nSubject: hi\r\nContent-Type: text/html\r\n\r\n"
               b'<html><body><a href="' + long_url.encode() + b'">long</a>'
               b'<a href="https://example.com/short">short</a></body></html>\r\n')
    await running(env)
    try:
        with caplog.at_level("INFO", logger="relay.delivery"):
            await env.submit(["r@example.org"])
            await wait_for(lambda: len(upstream.messages) == 1, 10)
        # (The part now goes quoted-printable: its one line is over 998 octets.)
        body = email.message_from_bytes(upstream.messages[0].data).get_payload(decode=True)
        assert isinstance(body, bytes) and long_url.encode() in body  # untouched, not broken
        assert b"https://example.com/short" not in body  # the short one is tracked
        assert any("too long to track" in r.getMessage() and "k1=v1" not in r.getMessage()
                   for r in caplog.records)  # said once, without the query string
    finally:
        MESSAGE = saved
        await stopped(env)


async def test_bodies_not_held_in_memory_are_read_back_from_the_spool(
        tmp_path: Path, upstream: Upstream, store: Store) -> None:
    config = make_config(tmp_path, upstream.port, max_delivery_seconds=1.0)
    upstream.handler.rcpt_replies["gone@example.org"] = "550 5.1.1 no such user"
    env = Env(config, SmtpUpstream(config.upstream, local_hostname="relay.test"), store)
    env.schedule = Schedule(max_held_bytes=0)  # a backlog: nothing is kept in memory
    env.deliverer = Deliverer(config=config, spool=env.spool, upstream=env.upstream, bus=env.bus,
                              signer=Signer([b"test-secret-0123456789"]), schedule=env.schedule)
    await running(env)
    try:
        mid = await env.submit(["ok@example.org", "gone@example.org"], tracked=False)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "pending" in (await env.states(mid)).values():
            await asyncio.sleep(0.05)
        assert await env.states(mid) == {"ok@example.org": "delivered", "gone@example.org": "bounced"}
        await wait_for(lambda: any(m.mail_from == "<>" for m in upstream.messages), 5)  # the DSN too
        assert env.schedule.held_bytes == 0
    finally:
        await stopped(env)
