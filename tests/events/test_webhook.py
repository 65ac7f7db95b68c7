# The webhook destination against a real aiohttp receiver on loopback and a real
# Store on a temporary SQLite file: headers and signature, retries, restarts, drops.
from __future__ import annotations

import asyncio
import json
import logging
import socket
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import ClientSession, web

from relay.events.bus import Event
from relay.events.subscriptions import SubscriptionConfirmations
from relay.events.webhook import WebhookDestination, retry_after, sign, verify
from relay.store import Store, webhooks

SECRET = "whsec_test"
WAIT = 10.0  # bound on every wait; the tests normally finish far sooner
HANG = "hang"


def make_event(n: int, message_id: str = "m") -> Event:
    # One message by default: the order these tests check is kept per message.
    # Non-ASCII on purpose: the signature is over the UTF-8 bytes that are sent.
    body = json.dumps({"eventType": "Open", "n": n, "subject": "Grüße"}, ensure_ascii=False)
    return Event(event_id=str(uuid.uuid4()), configuration_set="set", message_id=message_id,
                 recipient="to@example.com", event_type="Open",
                 timestamp="2024-01-01T00:00:00.000Z", body=body)


async def put(dest: WebhookDestination, store: Store, event: Event) -> None:
    """What the event bus does: commit the destination's outbox rows, then wake it."""
    await store.write(dest.statements(event))
    dest.wake()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Request:
    headers: dict[str, str]
    body: str


@dataclass
class Receiver:
    """A webhook endpoint: answers from `script` in turn (a status, a (status, headers)
    pair, or HANG), then `default`; records every request it gets."""
    port: int
    script: list[int | tuple[int, dict[str, str]] | str] = field(default_factory=list)
    default: int | str = 200
    requests: list[Request] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def ids(self) -> list[str]:
        return [r.headers["X-Relay-Event-Id"] for r in self.requests]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self.runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        self.release.set()  # let hanging handlers finish so the server stops cleanly
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def _hook(self, request: web.Request) -> web.Response:
        self.requests.append(Request(dict(request.headers), (await request.read()).decode()))
        reply = self.script.pop(0) if self.script else self.default
        if reply == HANG:
            await asyncio.wait_for(self.release.wait(), 60)
            reply = 503
        status, headers = reply if isinstance(reply, tuple) else (reply, {})
        assert isinstance(status, int)
        return web.Response(status=status, headers=headers, text="ok")


async def until(predicate: Callable[[], Awaitable[bool] | bool], timeout: float = WAIT) -> None:
    async def poll() -> None:
        while True:
            result = predicate()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), timeout)


async def outbox(store: Store, destination: str = "set/hook") -> list[tuple[str, int]]:
    rows = await store.fetchall("SELECT event_id, attempts FROM webhook_outbox "
                                "WHERE destination = ? ORDER BY seq", (destination,))
    return [(str(r[0]), int(r[1])) for r in rows]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver(port=free_port())  # not started: each test brings it up when it wants
    try:
        yield r
    finally:
        await r.stop()


Factory = Callable[..., Awaitable[WebhookDestination]]


@pytest.fixture
async def make_dest(store: Store, receiver: Receiver) -> AsyncIterator[Factory]:
    made: list[WebhookDestination] = []

    async def make(secret: str | None = SECRET, *, on: Store | None = None,
                   **kw: Any) -> WebhookDestination:
        kw.setdefault("first_delay", 0.05)
        kw.setdefault("max_delay", 0.2)
        d = WebhookDestination("set/hook", receiver.url, secret, on or store, **kw)
        await d.start()
        made.append(d)
        return d

    try:
        yield make
    finally:
        for d in made:  # closed before the store fixture closes the store
            await asyncio.wait_for(d.close(), WAIT)


# --- sign / verify: pure -------------------------------------------------------

BODY = '{"a":1,"b":"Grüße"}'
# printf '%s' '1700000000.{"a":1,"b":"Grüße"}' | openssl dgst -sha256 -hmac whsec_test
GOOD = "v1=ce31691ba56b28e94e47391b442a21fce0e0b93f75a2ccfe73997af592956ef4"


def test_sign_is_hmac_sha256_of_timestamp_dot_body() -> None:
    assert sign(SECRET, "1700000000", BODY) == GOOD


@pytest.mark.parametrize("secret, timestamp, body, header, now, expected", [
    (SECRET, "1700000000", BODY, GOOD, 1700000000, True),
    (SECRET, "1700000000", BODY, GOOD, 1700000300, True),  # at the edge of tolerance
    (SECRET, "1700000000", BODY, GOOD, 1700000301, False),  # too old: a replay
    (SECRET, "1700000000", BODY, GOOD, 1699999699, False),  # too far in the future
    ("other", "1700000000", BODY, GOOD, 1700000000, False),  # wrong secret
    (SECRET, "1700000001", BODY, GOOD, 1700000000, False),  # timestamp changed
    (SECRET, "1700000000", BODY + " ", GOOD, 1700000000, False),  # body changed
    (SECRET, "1700000000", BODY, GOOD.replace("v1=", "v0="), 1700000000, False),
    (SECRET, "1700000000", BODY, "v1=00, " + GOOD, 1700000000, True),  # secret roll-over
    (SECRET, "soon", BODY, GOOD, 1700000000, False),
    (SECRET, "1700000000", BODY, "", 1700000000, False),
    (SECRET, "1700000000", BODY, "v1=é", 1700000000, False),
])
def test_verify(secret: str, timestamp: str, body: str, header: str, now: float,
                expected: bool) -> None:
    assert verify(secret, timestamp, body, header, now=now) is expected


@pytest.mark.parametrize("value, expected", [
    (None, None), ("5", 5.0), ("0", 0.0), ("1.5", 1.5), ("-1", None), ("nan", None),
    ("inf", None), ("Wed, 21 Oct 2015 07:28:00 GMT", None),
])
def test_retry_after(value: str | None, expected: float | None) -> None:
    assert retry_after(value) == expected


# --- delivery ------------------------------------------------------------------

async def test_events_arrive_signed_with_their_headers(
        store: Store, receiver: Receiver, make_dest: Factory) -> None:
    await receiver.start()
    # Another destination's row shares the table and must be left alone.
    await store.write([("INSERT INTO webhook_outbox(event_id, destination, body, next_attempt_at) "
                        "VALUES ('x', 'set/other', '{}', 0)", ())])
    dest = await make_dest()
    events = [make_event(n) for n in range(3)]
    for e in events:
        await put(dest, store, e)
    await until(lambda: len(receiver.requests) == 3)
    assert receiver.ids() == [e.event_id for e in events]
    for e, r in zip(events, receiver.requests, strict=True):
        assert r.body == e.body
        assert r.headers["Content-Type"] == "application/json"
        ts = r.headers["X-Relay-Timestamp"]
        assert ts.isdigit()
        assert verify(SECRET, ts, r.body, r.headers["X-Relay-Signature"], now=time.time())
        assert not verify("wrong", ts, r.body, r.headers["X-Relay-Signature"], now=time.time())
    await until(lambda: _empty(store))
    assert await outbox(store, "set/other") == [("x", 0)]


async def _empty(store: Store) -> bool:
    return await outbox(store) == []


async def test_no_secret_no_signature(store: Store, receiver: Receiver, make_dest: Factory) -> None:
    await receiver.start()
    dest = await make_dest(None)
    await put(dest, store, make_event(1))
    await until(lambda: len(receiver.requests) == 1)
    assert "X-Relay-Signature" not in receiver.requests[0].headers
    assert receiver.requests[0].headers["X-Relay-Event-Id"]


async def test_down_then_500_then_200_loses_nothing_and_keeps_order(
        store: Store, receiver: Receiver, make_dest: Factory) -> None:
    dest = await make_dest()
    events = [make_event(n) for n in range(5)]
    for e in events:
        await put(dest, store, e)
    # Port closed: the head is retried (connection refused), the rest wait behind it.
    async def head_retried() -> bool:
        rows = await outbox(store)
        return len(rows) == 5 and rows[0][1] >= 2
    await until(head_retried)
    receiver.script = [500, 503]
    await receiver.start()
    await until(lambda: len(receiver.requests) == 7)
    ids = receiver.ids()
    assert ids[:3] == [events[0].event_id] * 3  # 500, 503, then 200
    assert ids[2:] == [e.event_id for e in events]
    await until(lambda: _empty(store))


async def test_outbox_survives_a_restart(tmp_path: Path, receiver: Receiver) -> None:
    path = str(tmp_path / "restart.db")
    store = Store(path)
    await store.open()
    dest = WebhookDestination("set/hook", receiver.url, SECRET, store,
                              first_delay=0.05, max_delay=0.2)
    await dest.start()
    events = [make_event(n) for n in range(4)]
    for e in events:
        await put(dest, store, e)
    await until(lambda: _count(store, 4))
    await asyncio.wait_for(dest.close(), WAIT)
    await store.close()

    store = Store(path)
    await store.open()
    dest = WebhookDestination("set/hook", receiver.url, SECRET, store,
                              first_delay=0.05, max_delay=0.2)
    try:
        await dest.start()
        await receiver.start()
        await until(lambda: len(set(receiver.ids())) == 4)
        assert list(dict.fromkeys(receiver.ids())) == [e.event_id for e in events]
        await until(lambda: _empty(store))
    finally:
        await asyncio.wait_for(dest.close(), WAIT)
        await store.close()


async def _count(store: Store, n: int) -> bool:
    return len(await outbox(store)) == n


async def test_4xx_is_tried_three_times_then_dead_lettered(
        store: Store, receiver: Receiver, make_dest: Factory,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="relay.events")
    receiver.script = [400, 400, 400]
    await receiver.start()
    dest = await make_dest()
    first, second = make_event(1), make_event(2)
    await put(dest, store, first)
    await put(dest, store, second)
    await until(lambda: len(receiver.requests) == 4)
    assert receiver.ids() == [first.event_id] * 3 + [second.event_id]
    await until(lambda: _empty(store))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(warnings) == 3 and len(errors) == 1
    for r in warnings + errors:
        message = r.getMessage()
        assert "set/hook" in message and "400" in message and first.event_id in message
        assert SECRET not in message
    assert "dead letters" in errors[0].getMessage()
    dead = await webhooks.dead_letters(store)
    assert [(r[1], r[2], r[5], r[8]) for r in dead] == [(first.event_id, "set/hook", 3, "HTTP 400")]


async def test_429_honours_retry_after(store: Store, receiver: Receiver, make_dest: Factory) -> None:
    # A backoff of a minute: only Retry-After can bring the retry in within the wait.
    receiver.script = [(429, {"Retry-After": "1"}), (408, {"Retry-After": "0"})]
    await receiver.start()
    dest = await make_dest(first_delay=60.0, max_delay=60.0)
    event = make_event(1)
    await put(dest, store, event)
    await until(lambda: len(receiver.requests) == 3)
    assert receiver.ids() == [event.event_id] * 3
    await until(lambda: _empty(store))


async def test_a_hanging_receiver_does_not_block_put_and_is_abandoned(
        store: Store, receiver: Receiver, make_dest: Factory) -> None:
    receiver.script = [HANG, HANG]
    await receiver.start()
    dest = await make_dest(timeout=0.3)
    events = [make_event(n) for n in range(100)]
    for e in events:
        await put(dest, store, e)  # returns at once: nothing here waits for the receiver
    await until(lambda: _count(store, 100))
    # Abandoned after `timeout`, retried, and then everything goes through in order.
    await until(lambda: len(set(receiver.ids())) == 100)
    assert receiver.ids()[:3] == [events[0].event_id] * 3
    assert list(dict.fromkeys(receiver.ids())) == [e.event_id for e in events]
    await until(lambda: _empty(store))


async def test_close_is_bounded_and_keeps_unsent_events(
        store: Store, receiver: Receiver) -> None:
    receiver.default = HANG
    await receiver.start()
    dest = WebhookDestination("set/hook", receiver.url, SECRET, store, timeout=60.0)
    await dest.start()
    event = make_event(1)
    await put(dest, store, event)
    await until(lambda: len(receiver.requests) == 1)
    await asyncio.wait_for(dest.close(), WAIT)  # the POST in flight is abandoned
    assert await outbox(store) == [(event.event_id, 0)]


# --- sns format, mail_destination, dead letters ---------------------------------

def record_event(event_type: str, recipient: str | None, message_id: str = "m") -> Event:
    record = {"eventType": event_type, "mail": {"messageId": message_id, "destination": ["a@x.test", "b@x.test"]},
              event_type.lower(): {"timestamp": "2024-01-01T00:00:00.000Z"}}
    return Event(event_id=str(uuid.uuid4()), configuration_set="set", message_id=message_id, recipient=recipient,
                 event_type=event_type, timestamp="2024-01-01T00:00:00.000Z", body=json.dumps(record))


async def test_sns_format_posts_what_sns_posts(store: Store, receiver: Receiver, make_dest: Factory) -> None:
    await receiver.start()
    dest = await make_dest(format="sns", mail_destination="recipient")
    events = [record_event("Open", "b@x.test"), record_event("Send", None)]
    for e in events:
        await put(dest, store, e)
    await until(lambda: len(receiver.requests) == 2)
    for e, r in zip(events, receiver.requests, strict=True):
        doc = json.loads(r.body)
        assert set(doc) == {"Type", "MessageId", "TopicArn", "Message", "Timestamp", "UnsubscribeURL"}
        assert doc["Type"] == "Notification" and doc["MessageId"] == e.event_id
        assert doc["TopicArn"] == "arn:aws:sns:relay:000000000000:set-hook"
        assert r.headers["x-amz-sns-message-type"] == "Notification"
        assert r.headers["x-amz-sns-message-id"] == e.event_id
        assert r.headers["x-amz-sns-topic-arn"] == doc["TopicArn"]
        assert r.headers["Content-Type"] == "text/plain; charset=UTF-8"
        assert verify(SECRET, r.headers["X-Relay-Timestamp"], r.body, r.headers["X-Relay-Signature"],
                      now=time.time())
    opened, sent = (json.loads(json.loads(r.body)["Message"]) for r in receiver.requests)
    assert opened["mail"]["destination"] == ["b@x.test"]  # the one recipient it concerns
    assert sent["mail"]["destination"] == ["a@x.test", "b@x.test"]  # Send concerns the message


async def test_a_refused_event_is_dead_lettered_without_holding_others_then_replayed(
        store: Store, receiver: Receiver, make_dest: Factory) -> None:
    refused = make_event(1, "stuck")
    others = [make_event(n, f"m{n}") for n in range(2, 6)]
    receiver.default = 200
    await receiver.start()

    async def picky(request: web.Request) -> web.Response:
        body = (await request.read()).decode()
        receiver.requests.append(Request(dict(request.headers), body))
        return web.Response(status=500 if body == refused.body and not accept.is_set() else 200)
    accept = asyncio.Event()
    receiver._hook = picky  # type: ignore[method-assign]
    await receiver.stop()
    await receiver.start()
    dest = await make_dest(max_retry_seconds=0.3, idle_poll=0.05)
    await put(dest, store, refused)
    for e in others:
        await put(dest, store, e)
    await until(lambda: {e.event_id for e in others} <= set(receiver.ids()))
    async def dead() -> bool:
        return len(await webhooks.dead_letters(store)) == 1
    await until(dead)
    assert await _empty(store)
    counted = await store.fetchall("SELECT configuration_set, metric, count FROM stats_hourly")
    assert counted == [("set", "deadLetter", 1)]
    accept.set()
    assert await webhooks.replay(store, "set/other", now=time.time()) == 0
    assert await webhooks.replay(store, "set/hook", now=time.time()) == 1  # no wake(): the sender polls
    await until(lambda: receiver.ids()[-1] == refused.event_id and receiver.requests[-1].body == refused.body)
    await until(lambda: _empty(store))
    assert await webhooks.dead_letters(store) == []


async def test_confirm_subscription_goes_first_and_holds_events_until_confirmed(
        store: Store, receiver: Receiver, make_dest: Factory) -> None:
    site_port = free_port()
    app = web.Application()
    topic = "arn:aws:sns:us-east-1:123456789012:ses-events"
    SubscriptionConfirmations(store=store, key=b"k" * 32, topics={"set/hook": topic}).register(app)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", site_port).start()
    confirm = asyncio.Event()
    answers: list[int] = []

    async def consumer(request: web.Request) -> web.Response:
        # What AWS's sample HTTP endpoint does: fetch SubscribeURL when told to.
        body = (await request.read()).decode()
        receiver.requests.append(Request(dict(request.headers), body))
        doc = json.loads(body)
        if doc["Type"] == "SubscriptionConfirmation" and confirm.is_set():
            async with ClientSession() as http:
                bad = doc["SubscribeURL"].replace(doc["Token"], "0" * 64)
                async with http.get(bad) as r:
                    answers.append(r.status)
                async with http.get(doc["SubscribeURL"]) as r:
                    answers.append(r.status)
                    assert "<SubscriptionArn>" in await r.text()
        return web.Response(status=200)
    receiver._hook = consumer  # type: ignore[method-assign]
    await receiver.start()
    try:
        dest = await make_dest(format="sns", topic_arn=topic, confirm_key=b"k" * 32, idle_poll=0.05,
                               base_url=f"http://127.0.0.1:{site_port}")
        event = make_event(1)
        await put(dest, store, event)
        await until(lambda: len(receiver.requests) == 1)
        first = receiver.requests[0]
        assert first.headers["x-amz-sns-message-type"] == "SubscriptionConfirmation"
        doc = json.loads(first.body)
        assert doc["Type"] == "SubscriptionConfirmation" and doc["TopicArn"] == topic
        assert doc["SubscribeURL"].startswith(f"http://127.0.0.1:{site_port}/sns/confirm?Action=ConfirmSubscription")
        assert await outbox(store) == [(event.event_id, 0)]  # held: not confirmed
        await dest.close()
        confirm.set()  # a restart asks again; this time the consumer confirms
        dest = await make_dest(format="sns", topic_arn=topic, confirm_key=b"k" * 32, idle_poll=0.05,
                               base_url=f"http://127.0.0.1:{site_port}")
        await until(lambda: any(json.loads(r.body)["Type"] == "Notification" for r in receiver.requests))
        assert answers == [404, 200]
        assert [json.loads(r.body)["Type"] for r in receiver.requests] == [
            "SubscriptionConfirmation", "SubscriptionConfirmation", "Notification"]
        assert await store.get_setting("sns_confirmed:set/hook") == topic
    finally:
        await runner.cleanup()


async def test_events_of_other_messages_are_posted_while_one_hangs(
        store: Store, receiver: Receiver, make_dest: Factory) -> None:
    receiver.script = [HANG]
    await receiver.start()
    dest = await make_dest(timeout=WAIT * 2, window=2)
    slow, other = make_event(1, "a"), make_event(2, "b")
    await put(dest, store, slow)
    await until(lambda: len(receiver.requests) == 1)  # the first POST is hanging
    await put(dest, store, other)
    await until(lambda: other.event_id in receiver.ids())  # posted beside it, not after it
    receiver.release.set()
    await until(lambda: receiver.ids().count(slow.event_id) == 2)  # 503 from the hang, then 200
    await until(lambda: _empty(store))


async def test_4xx_count_survives_a_restart(tmp_path: Path, receiver: Receiver) -> None:
    path = str(tmp_path / "rejections.db")
    receiver.script = [400, 400, 400]
    await receiver.start()
    event = make_event(1)
    for run in range(2):
        store = Store(path)
        await store.open()
        dest = WebhookDestination("set/hook", receiver.url, SECRET, store, first_delay=0.05, max_delay=0.2)
        try:
            await dest.start()
            if run == 0:
                await put(dest, store, event)
                await until(lambda: len(receiver.requests) == 2)
                await until(lambda s=store: _rows_with(s, rejections=2))  # type: ignore[misc]
            else:  # the third rejection is the last, not the first of three more
                await until(lambda s=store: _dead(s, 1))  # type: ignore[misc]
                assert len(receiver.requests) == 3
        finally:
            await asyncio.wait_for(dest.close(), WAIT)
            await store.close()


async def _rows_with(store: Store, *, rejections: int) -> bool:
    return await store.fetchall("SELECT rejections FROM webhook_outbox") == [(rejections,)]


async def _dead(store: Store, n: int) -> bool:
    return len(await webhooks.dead_letters(store)) == n


async def test_an_outbox_from_before_dead_letters_is_upgraded_and_sent(
        tmp_path: Path, receiver: Receiver) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE webhook_outbox (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL, destination TEXT NOT NULL,"
        " body TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL);"
        "INSERT INTO webhook_outbox(event_id, destination, body, attempts, next_attempt_at)"
        " VALUES ('old-1', 'set/hook', '{}', 2, 0), ('old-2', 'set/hook', '{}', 0, 0);")
    old.commit()
    old.close()
    await receiver.start()
    store = Store(str(path))
    await store.open()
    dest = WebhookDestination("set/hook", receiver.url, SECRET, store, first_delay=0.05, max_delay=0.2)
    try:
        await dest.start()
        await until(lambda: receiver.ids() == ["old-1", "old-2"])  # one message: in order
        await until(lambda: _empty(store))
    finally:
        await asyncio.wait_for(dest.close(), WAIT)
        await store.close()
