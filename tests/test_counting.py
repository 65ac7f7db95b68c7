# counting.coalesce: a batch of events' rows, with the plain counter increments summed,
# leaves exactly the same tables as the rows one by one (unique opens/clicks included).
from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

from relay import config as cfg
from relay.events import records
from relay.events.bus import EventBus
from relay.events.sqlite import SqliteDestination
from relay.store import SCHEMA, counting

SETS = cfg.parse({"configuration_sets": {"news": {"event_destinations": [
    {"name": "db", "type": "sqlite", "matching_event_types": ["send", "open", "click", "delivery"]}]}}})


def _mail(mid: str, rcpts: list[str]) -> records.MailInfo:
    return records.mail_info(message_id=mid, timestamp=datetime(2026, 11, 29, 10, 59, tzinfo=UTC),
                             source="a@example.com", destination=rcpts,
                             header_block=b"From: A <a@example.com>\r\nSubject: hi\r\n\r\n",
                             configuration_set="news", message_tags={"campaign": ["x", "y"]},
                             source_ip="192.0.2.1", caller_identity=None)


def _tables(rows: list[tuple[str, Any]]) -> dict[str, list[tuple[Any, ...]]]:
    db = sqlite3.connect(":memory:")
    db.executescript(SCHEMA)
    for sql, params in rows:
        db.execute(sql, params)
    names = [n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {n: sorted(db.execute(f"SELECT * FROM {n}").fetchall(), key=repr) for n in names}


def test_coalesced_batch_leaves_the_same_rows() -> None:
    bus = EventBus(SETS.configuration_sets, {("news", "db"): SqliteDestination("news/db")}, store=None)  # type: ignore[arg-type]
    m1, m2 = _mail("m1", ["r1@x.org", "r2@x.org"]), _mail("m2", ["r1@x.org"])
    rows: list[tuple[str, Any]] = []
    t = datetime(2026, 11, 29, 10, 59, 58, tzinfo=UTC)
    rows += bus.statements("news", records.send_event(m1), recipient_count=2)
    rows += bus.statements(None, records.send_event(m2), recipient_count=1)
    for i in range(12):  # across an hour boundary; repeated and new message-recipient pairs
        at = t + timedelta(seconds=i // 3)
        mail, rcpt = (m1, "r1@x.org") if i % 3 == 0 else (m1, "r2@x.org") if i % 3 == 1 else (m2, "r1@x.org")
        rows += bus.statements("news", records.open_event(mail, recipient=rcpt, timestamp=at, ip_address="1.2.3.4",
                                                          user_agent="ua"), rcpt)
        rows += bus.statements("news", records.click_event(mail, recipient=rcpt, timestamp=at, ip_address="1.2.3.4",
                                                           user_agent="ua", link=f"https://e.x/{i % 2}",
                                                           link_tags={"k": ["v", str(i % 2)]}), rcpt)
    merged = counting.coalesce(rows)
    assert len(merged) < len(rows) * 3 // 4
    before, after = _tables(rows), _tables(merged)
    assert before == after
    assert any(n for n in before.values())


def test_pending_merges_as_rows_come() -> None:
    """The bus adds each event's rows as it is published: the same result as one pass."""
    bus = EventBus(SETS.configuration_sets, {("news", "db"): SqliteDestination("news/db")}, store=None)  # type: ignore[arg-type]
    mail = _mail("m1", ["r1@x.org", "r2@x.org"])
    t = datetime(2026, 11, 29, 10, 59, 59, tzinfo=UTC)
    events = [bus.statements("news", records.open_event(mail, recipient=f"r{i % 2 + 1}@x.org",
                                                        timestamp=t + timedelta(seconds=i % 3), ip_address="1.2.3.4",
                                                        user_agent="ua"), f"r{i % 2 + 1}@x.org") for i in range(9)]
    pending = counting.Pending()
    for rows in events:
        pending.add(rows)
    flat = [row for rows in events for row in rows]
    assert list(pending) == counting.coalesce(flat)
    assert _tables(list(pending)) == _tables(flat)
    again = counting.Pending([*pending, *counting.Pending(events[0])])  # a failed batch put back before new rows
    assert _tables(list(again)) == _tables(flat + events[0])
