# Events are never dropped: the bus retries hits it could not store, the file
# destination retries lines it could not write, and after kill -9 every accepted
# message has its Send event and every delivered recipient its Delivery event.
from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import aiosmtplib

from relay import config as cfg
from relay.events import records
from relay.events.bus import EventBus
from relay.events.file import FileDestination
from relay.events.sqlite import SqliteDestination
from relay.store import Store
from tests.support import RelayProcess, Upstream, wait_for

SETS = cfg.parse({"configuration_sets": {"news": {"event_destinations": [
    {"name": "db", "type": "sqlite", "matching_event_types": ["open"]},
    {"name": "log", "type": "file", "path": "unused", "matching_event_types": ["open"]}]}}}).configuration_sets


def open_record(n: int) -> dict:
    mail = records.mail_info(message_id=f"m{n}", timestamp=datetime.now(timezone.utc), source="a@example.com",
                             destination=["b@example.org"], header_block=b"Subject: x\r\n\r\n",
                             configuration_set="news", message_tags={}, source_ip="127.0.0.1",
                             caller_identity=None)
    return records.open_event(mail, recipient="b@example.org", timestamp=datetime.now(timezone.utc),
                              ip_address="127.0.0.1", user_agent="test")


def stored(db: Path) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return [m for (m,) in con.execute("SELECT message_id FROM events ORDER BY seq")]
    finally:
        con.close()


async def test_hits_published_while_the_database_refuses_writes_are_stored_later(
        tmp_path: Path, store: Store) -> None:
    path = tmp_path / "events.jsonl"
    file = FileDestination("news/log", str(path), store, retry_delay=0.05)
    bus = EventBus(SETS, {("news", "db"): SqliteDestination("news/db"), ("news", "log"): file}, store,
                   retry_delay=0.05)
    await file.start()
    await bus.start()
    try:
        assert store._writer is not None
        await store._in_writer(store._writer.execute, "PRAGMA query_only = 1")  # a full disk, say
        for n in range(3):
            bus.publish("news", open_record(n), "b@example.org")
        await asyncio.sleep(0.3)  # several failed commits
        assert stored(tmp_path / "relay.db") == []
        await store._in_writer(store._writer.execute, "PRAGMA query_only = 0")
        await wait_for(lambda: stored(tmp_path / "relay.db") == ["m0", "m1", "m2"], 5)
        await wait_for(lambda: path.exists() and len(path.read_text().splitlines()) == 3, 5)
        assert [json.loads(line)["mail"]["messageId"] for line in path.read_text().splitlines()] == ["m0", "m1", "m2"]
    finally:
        await bus.close()
        await file.close()


async def test_file_destination_retries_until_it_can_write_and_keeps_order(tmp_path: Path, store: Store) -> None:
    path = tmp_path / "events.jsonl"
    path.mkdir()  # not writable as a file (root ignores permissions, so a directory it is)
    file = FileDestination("news/log", str(path), store, retry_delay=0.05)
    bus = EventBus(SETS, {("news", "db"): SqliteDestination("news/db"), ("news", "log"): file}, store)
    await file.start()
    await bus.start()
    try:
        for n in range(5):
            bus.publish("news", open_record(n), "b@example.org")
        await wait_for(lambda: len(stored(tmp_path / "relay.db")) == 5, 5)
        await asyncio.sleep(0.2)  # the file destination fails and keeps its rows
        rows = await store.fetchall("SELECT COUNT(*) FROM file_outbox")
        assert rows == [(5,)]
        path.rmdir()
        await wait_for(lambda: path.is_file() and len(path.read_text().splitlines()) == 5, 5)
        assert [json.loads(line)["mail"]["messageId"] for line in path.read_text().splitlines()] == [
            f"m{n}" for n in range(5)]
        assert path.stat().st_mode & 0o777 == 0o600  # addresses and subjects: the owner's only
        await wait_for(lambda: stored_outbox(tmp_path / "relay.db") == 0, 5)  # published rows are removed
    finally:
        await bus.close()
        await file.close()


def stored_outbox(db: Path) -> int:
    con = sqlite3.connect(db)
    try:
        return int(con.execute("SELECT COUNT(*) FROM file_outbox").fetchone()[0])
    finally:
        con.close()


SET = """
[configuration_sets.plain]
[[configuration_sets.plain.event_destinations]]
name = "db"
type = "sqlite"
matching_event_types = ["send", "delivery"]
[[configuration_sets.plain.event_destinations]]
name = "jsonl"
type = "file"
path = "events.jsonl"
matching_event_types = ["send", "delivery"]
"""


async def _submit_many(port: int, count: int, accepted: list[str]) -> None:
    """Submit up to `count` messages, noting each accepted id; stops when the relay dies."""
    for n in range(count):
        try:
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=5) as c:
                _, reply = await c.sendmail("a@example.com", [f"r{n}@example.org"],
                                            f"X-SES-CONFIGURATION-SET: plain\r\nSubject: {n}\r\n\r\nbody\r\n".encode())
            accepted.append(reply.split()[-1])
        except (aiosmtplib.SMTPException, OSError):
            return


async def test_kill_9_loses_no_send_or_delivery_event(tmp_path: Path) -> None:
    up = await Upstream().start()
    relay = RelayProcess(tmp_path, SET, upstream_url=f"smtp://127.0.0.1:{up.port}")
    every: list[str] = []
    try:
        for _ in range(2):  # two crashes, as in the report
            await relay.start()
            accepted: list[str] = []
            sender = asyncio.create_task(_submit_many(relay.smtp_port, 200, accepted))
            await wait_for(lambda a=accepted: len(a) >= 15, 20)  # type: ignore[misc]
            await relay.stop(sig=signal.SIGKILL)  # mid-stream: intake and delivery both busy
            await sender
            every.extend(accepted)
        await relay.start()  # resumes pending deliveries
        # Everything finishes: each accepted message's recipient is delivered.
        await wait_for(lambda: relay.query("SELECT COUNT(*) FROM recipients WHERE state = 'pending'") == [(0,)], 20)
        messages = {m for (m,) in relay.query("SELECT id FROM messages")}
        sends = {m for (m,) in relay.query("SELECT message_id FROM events WHERE event_type = 'Send'")}
        assert set(every) <= messages  # every 250 was durable
        assert messages and sends == messages
        delivered = {(m, r) for m, r in relay.query("SELECT message_id, recipient FROM recipients WHERE state = 'delivered'")}
        deliveries = set(relay.query("SELECT message_id, recipient FROM events WHERE event_type = 'Delivery'"))
        assert delivered and deliveries == delivered
        # The JSON Lines file too (a crash between append and cleanup may repeat a line, never lose one).
        jsonl = tmp_path / "events.jsonl"
        await wait_for(lambda: relay.query("SELECT COUNT(*) FROM file_outbox") == [(0,)], 10)
        lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
        assert {e["mail"]["messageId"] for e in lines if e["eventType"] == "Send"} == messages
        assert {(e["mail"]["messageId"], e["delivery"]["recipients"][0])
                for e in lines if e["eventType"] == "Delivery"} == delivered
    finally:
        await relay.stop()
        await up.stop()
