# relay.store.suppression against a real SQLite file: the list's upserts and reads, the
# contacts' opt-outs, the spool keeping a message's list management across a restart,
# and a file from before these tables.
from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from relay.events import records
from relay.events.records import TopicPreferences
from relay.spool import Job, Spool
from relay.store import Store
from relay.store import suppression as s
from relay.unsubscribe import ListManagement


async def test_suppress_upserts_and_reads(store: Store) -> None:
    await store.write(s.suppress_statements("Ana@Example.com", "BOUNCE", "m1", 100.0))
    await store.write(s.suppress_statements("ana@example.com", "COMPLAINT", "m2", 200.0))
    await store.write(s.suppress_statements("b_c@example.com", "BOUNCE", None, 300.0))
    entry = await s.is_suppressed(store, "ANA@example.com")
    assert entry is not None and (entry.address, entry.reason, entry.last_update, entry.message_id) == (
        "ana@example.com", "COMPLAINT", 200.0, "m2")
    assert [e.address for e in await s.entries(store)] == ["ana@example.com", "b_c@example.com"]
    # LIKE's wildcards in a search are plain characters.
    assert [e.address for e in await s.entries(store, search="B_C")] == ["b_c@example.com"]
    assert await s.entries(store, search="%") == []
    assert await s.count(store) == 2
    await store.write(s.remove_statements("ANA@example.com"))
    assert await s.is_suppressed(store, "ana@example.com") is None
    with pytest.raises(ValueError):
        s.suppress_statements("x@example.com", "bounce", None, 0.0)


async def test_batch_lookup_over_many_addresses(store: Store) -> None:
    rows = [(f"u{n}@example.com", "BOUNCE") for n in range(1200)]
    await store.write(s.import_statements(rows, time.time()))
    asked = [f"U{n}@example.com" for n in range(0, 2400, 2)]
    found = await s.suppressed(store, asked)
    assert sorted(found) == sorted(f"u{n}@example.com" for n in range(0, 1200, 2))


async def test_contacts_opt_out(store: Store) -> None:
    none = TopicPreferences(unsubscribe_all=False, topics=())
    assert await s.preferences(store, "news", "ann@example.org") == none
    await store.write(s.opt_out_statements("news", "Ann@example.org", "weekly", 1.0))
    assert await s.preferences(store, "news", "ann@example.org") == TopicPreferences(
        unsubscribe_all=False, topics=(("weekly", "OptOut"),))
    people = ["ann@example.org", "ben@example.org"]
    assert await s.unsubscribed(store, "news", "weekly", people) == {"ann@example.org"}
    assert await s.unsubscribed(store, "news", "offers", people) == set()
    assert await s.unsubscribed(store, "other", "weekly", people) == set()
    await store.write(s.opt_out_statements("news", "ben@example.org", None, 2.0))
    assert await s.unsubscribed(store, "news", "offers", ["BEN@example.org"]) == {"ben@example.org"}
    assert await s.unsubscribed(store, "news", None, people) == {"ben@example.org"}
    # A topic opt-out later does not undo unsubscribe-all.
    await store.write(s.opt_out_statements("news", "ben@example.org", "weekly", 3.0))
    assert (await s.preferences(store, "news", "ben@example.org")).unsubscribe_all is True


async def test_the_spool_keeps_list_management(store: Store) -> None:
    now = time.time()
    mail = records.mail_info(message_id="m1", timestamp=datetime.fromtimestamp(now, UTC), source="a@example.com",
                             destination=["x@example.org"], header_block=b"Subject: x\r\n", configuration_set=None,
                             message_tags={}, source_ip="127.0.0.1", caller_identity=None)
    for mid, lists in (("m1", ListManagement("news", "weekly")), ("m2", None)):
        await Spool(store).put(Job(message_id=mid, accepted_at=now, configuration_set=None, mail_from="a@example.com",
                                   mail=mail, tracked=False, attempts={"x@example.org": 0}, due=now, data=b"x",
                                   list_management=lists))
    jobs = {j.message_id: j for j in await Spool(store).pending()}
    assert jobs["m1"].list_management == ListManagement("news", "weekly")
    assert jobs["m2"].list_management is None


async def test_a_file_from_before(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE messages (id TEXT PRIMARY KEY, accepted_at REAL NOT NULL, configuration_set TEXT, "
                "mail_from TEXT NOT NULL, data BLOB, mail TEXT NOT NULL, tracked INTEGER NOT NULL DEFAULT 0)")
    con.commit()
    con.close()
    reader = Store(str(path))
    await reader.open(readonly=True)  # the CLI beside an old relay: an empty list, no error
    try:
        assert await s.entries(reader) == [] and await s.count(reader) == 0
    finally:
        await reader.close()
    writer = Store(str(path))
    await writer.open()  # the migration adds the column and the tables
    try:
        columns = {r[1] for r in await writer.fetchall("PRAGMA table_info(messages)")}
        assert "list_management" in columns
        await writer.write(s.suppress_statements("a@example.com", "BOUNCE", None, 1.0))
        assert await s.count(writer) == 1
    finally:
        await writer.close()


def test_subscription_record_shape() -> None:
    mail = records.mail_info(message_id="m1", timestamp=datetime(2026, 1, 2, tzinfo=UTC), source="a@example.com",
                             destination=["x@example.org", "y@example.org"], header_block=b"Subject: x\r\n",
                             configuration_set="news", message_tags={}, source_ip="127.0.0.1", caller_identity=None)
    old = TopicPreferences(unsubscribe_all=False, topics=(("weekly", "OptIn"),))
    new = TopicPreferences(unsubscribe_all=False, topics=(("weekly", "OptOut"),))
    record = records.subscription_event(mail, recipient="y@example.org", contact_list="news",
                                        timestamp=datetime(2026, 1, 3, 4, 5, 6, 789000, tzinfo=UTC),
                                        source="UnsubscribeHeader", new=new, old=old)
    assert record["eventType"] == "Subscription" and set(record) == {"eventType", "mail", "subscription"}
    assert record["subscription"] == {
        "contactList": "news", "timestamp": "2026-01-03T04:05:06.789Z", "source": "UnsubscribeHeader",
        "newTopicPreferences": {"unsubscribeAll": False,
                                "topicSubscriptionStatus": [{"topicName": "weekly", "subscriptionStatus": "OptOut"}]},
        "oldTopicPreferences": {"unsubscribeAll": False,
                                "topicSubscriptionStatus": [{"topicName": "weekly", "subscriptionStatus": "OptIn"}]},
        "recipient": "y@example.org"}
    # mail_destination = "recipient": the subscription concerns one recipient.
    assert records.for_recipient(record, "y@example.org")["mail"]["destination"] == ["y@example.org"]
