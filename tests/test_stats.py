# The read side over a real SQLite file: events go in exactly as relay writes them
# (EventBus.statements, committed), and the stats document, events, timelines and
# retention come out. Period parsing and bucketing are pure.
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from relay import config as cfg
from relay import retention, stats
from relay.events import records
from relay.events.bus import EventBus
from relay.events.sqlite import SqliteDestination
from relay.events.webhook import WebhookDestination
from relay.intake import new_message_id
from relay.spool import Job, Spool
from relay.store import Store

NOW = datetime(2026, 11, 20, 12, 30, tzinfo=UTC)
CONFIG = cfg.parse({
    "storage": {"path": "unused"},
    "configuration_sets": {
        "news": {"event_destinations": [{"name": "hook", "type": "webhook", "url": "http://127.0.0.1:9/x",
                                         "matching_event_types": ["open", "click"]}]},
        "plain": {"event_destinations": [{"name": "db", "type": "sqlite", "matching_event_types": ["send"]}]},
    },
})


def test_parse_period() -> None:
    p = stats.parse_period(None, None, now=NOW)
    assert (p.since, p.until) == (NOW - timedelta(days=7), NOW)
    assert stats.parse_period("24h", None, now=NOW).since == NOW - timedelta(hours=24)
    assert stats.parse_period("2026-11-01", "2026-11-02T06:00:00Z", now=NOW) == stats.Period(
        datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 2, 6, tzinfo=UTC))
    for bad in ("yesterday", "7x", "-3d"):
        with pytest.raises(stats.PeriodError, match="7d"):
            stats.parse_period(bad, None, now=NOW)
    with pytest.raises(stats.PeriodError, match="before"):
        stats.parse_period("1d", "3d", now=NOW)


def test_buckets_start_on_whole_hours_and_days() -> None:
    p = stats.Period(datetime(2026, 11, 1, 10, 30, tzinfo=UTC), datetime(2026, 11, 1, 13, 0, tzinfo=UTC))
    assert [b.hour for b in stats.buckets(p, "hour")] == [10, 11, 12]
    days = stats.buckets(stats.Period(datetime(2026, 11, 1, 10, tzinfo=UTC), datetime(2026, 11, 3, 1, tzinfo=UTC)), "day")
    assert [(b.day, b.hour) for b in days] == [(1, 0), (2, 0), (3, 0)]
    with pytest.raises(stats.PeriodError):
        stats.buckets(p, "week")


class Traffic:
    """Writes events the way intake, delivery and tracking do: with the bus's statements."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # Real destinations (never started: only their outbox rows are written).
        self.bus = EventBus(CONFIG.configuration_sets, {
            ("news", "hook"): WebhookDestination("news/hook", "http://127.0.0.1:9/x", None, store),
            ("plain", "db"): SqliteDestination("plain/db")}, store)

    async def send(self, cset: str | None, rcpts: list[str], at: datetime, tags: dict[str, list[str]] | None = None
                   ) -> records.MailInfo:
        mid = new_message_id(at.timestamp())
        mail = records.mail_info(message_id=mid, timestamp=at, source="a@example.com", destination=rcpts,
                                 header_block=b"Subject: Hello\r\n\r\n", configuration_set=cset,
                                 message_tags=tags or {}, source_ip="127.0.0.1", caller_identity=None)
        job = Job(message_id=mid, accepted_at=at.timestamp(), configuration_set=cset, mail_from="a@example.com",
                  mail=mail, tracked=False, attempts=dict.fromkeys(rcpts, 0), data=b"Subject: Hello\r\n\r\nhi\r\n")
        await Spool(self.store).put(job, self.bus.statements(cset, records.send_event(mail), recipient_count=len(rcpts)))
        return mail

    async def event(self, cset: str | None, record: dict[str, Any], rcpt: str | None) -> None:
        await self.store.write(self.bus.statements(cset, record, rcpt))

    async def delivered(self, cset: str | None, mail: records.MailInfo, rcpt: str, at: datetime) -> None:
        await self.event(cset, records.delivery_event(mail, recipients=[rcpt], timestamp=at, smtp_response="250 ok",
                                                      reporting_mta="relay.test", remote_mta_ip=None), rcpt)

    async def bounced(self, cset: str | None, mail: records.MailInfo, rcpt: str, at: datetime) -> None:
        await self.event(cset, records.bounce_event(
            mail, recipients=[records.BouncedRecipient(email_address=rcpt, status="5.1.1", diagnostic_code="x")],
            bounce_type="Permanent", bounce_sub_type="General", timestamp=at, feedback_id="f",
            reporting_mta="relay.test"), rcpt)

    async def opened(self, cset: str, mail: records.MailInfo, rcpt: str, at: datetime) -> None:
        await self.event(cset, records.open_event(mail, recipient=rcpt, timestamp=at, ip_address="127.0.0.9",
                                                  user_agent="ua"), rcpt)

    async def clicked(self, cset: str, mail: records.MailInfo, rcpt: str, at: datetime, link: str,
                      tags: dict[str, list[str]] | None = None) -> None:
        await self.event(cset, records.click_event(mail, recipient=rcpt, timestamp=at, ip_address="127.0.0.9",
                                                   user_agent="ua", link=link, link_tags=tags or {}), rcpt)


async def test_stats_document_counts_everything_whatever_the_destinations(store: Store) -> None:
    t = Traffic(store)
    at = NOW - timedelta(days=1)
    news = await t.send("news", ["a@x.test", "b@x.test", "c@x.test"], at, {"campaign": ["spring"]})
    await t.delivered("news", news, "a@x.test", at)
    await t.delivered("news", news, "b@x.test", at)
    await t.bounced("news", news, "c@x.test", at)
    for _ in range(2):
        await t.opened("news", news, "a@x.test", at + timedelta(hours=1))
    await t.opened("news", news, "b@x.test", at + timedelta(hours=2))
    await t.clicked("news", news, "a@x.test", at + timedelta(hours=1), "https://x.test/1", {"k": ["v"]})
    await t.clicked("news", news, "a@x.test", at + timedelta(hours=1), "https://x.test/1", {"k": ["v"]})
    await t.clicked("news", news, "b@x.test", at + timedelta(hours=3), "https://x.test/2")
    plain = await t.send(None, ["d@x.test"], at)  # no set at all
    await t.delivered(None, plain, "d@x.test", at)
    await t.send("news", ["old@x.test"], NOW - timedelta(days=30))  # outside the default period

    period = stats.parse_period(None, None, now=NOW)
    doc = await stats.stats(store, configuration_set=None, period=period)
    assert list(doc) == ["since", "until", "configuration_set", "counts", "recipients", "unique", "rates",
                         "top_links", "link_tags"]  # no webhook_dead_letters: there are none
    assert doc["counts"] == {"send": 2, "reject": 0, "bounce": 1, "complaint": 0, "delivery": 3, "open": 3,
                             "click": 3, "renderingFailure": 0, "deliveryDelay": 0, "subscription": 0}
    assert doc["recipients"] == 4 and doc["unique"] == {"open": 2, "click": 2}
    assert doc["rates"] == {"delivery": 0.75, "bounce": 0.25, "complaint": 0.0, "open": 1.0, "click": 1.0}
    assert doc["top_links"] == [{"link": "https://x.test/1", "clicks": 2, "unique_clicks": 1},
                                {"link": "https://x.test/2", "clicks": 1, "unique_clicks": 1}]
    assert doc["link_tags"] == [{"name": "k", "value": "v", "clicks": 2}]

    no_set = await stats.stats(store, configuration_set=stats.NO_SET, period=period)
    assert no_set["counts"]["send"] == 1 and no_set["recipients"] == 1 and no_set["rates"]["delivery"] == 1.0
    assert no_set["rates"]["open"] is None  # nothing open-tracked: no denominator

    tagged = await stats.stats(store, configuration_set="news", period=period, tag=("campaign", "spring"))
    assert tagged["counts"]["send"] == 1 and tagged["unique"] == {"open": 2, "click": 2}
    assert tagged["top_links"] == doc["top_links"] and tagged["link_tags"] == doc["link_tags"]
    untagged = await stats.stats(store, configuration_set="news", period=period, tag=("campaign", "autumn"))
    assert untagged["counts"]["send"] == 0 and untagged["top_links"] == []

    series = (await stats.stats(store, configuration_set="news", period=period, by="day"))["series"]
    assert len(series) == 8 and [b["counts"]["send"] for b in series].count(1) == 1
    assert sum(b["counts"]["open"] for b in series) == 3


async def test_events_timeline_and_retention(store: Store) -> None:
    t = Traffic(store)
    at = NOW - timedelta(days=1)
    mail = await t.send("news", ["a@x.test", "b@x.test"], at)
    await t.delivered("news", mail, "a@x.test", at + timedelta(seconds=1))
    await t.opened("news", mail, "a@x.test", at + timedelta(seconds=2))
    await t.clicked("news", mail, "b@x.test", at + timedelta(seconds=3), "https://x.test/")

    opens = await stats.events(store, types=["open", "Click"])
    assert [r["eventType"] for _, r in opens] == ["Open", "Click"]
    after = await stats.events(store, after_seq=opens[0][0])
    assert [r["eventType"] for _, r in after] == ["Click"]
    assert [r["eventType"] for _, r in await stats.events(store, recipient="a@x.test")] == ["Delivery", "Open"]
    with pytest.raises(ValueError, match="unknown event type"):
        await stats.events(store, types=["opened"])

    doc = await stats.message(store, mail.message_id)
    assert doc is not None and doc["message"]["messageId"] == mail.message_id
    assert [(r["address"], r["state"], [e["eventType"] for e in r["events"]]) for r in doc["recipients"]] == [
        ("a@x.test", "pending", ["Send", "Delivery", "Open"]), ("b@x.test", "pending", ["Send", "Click"])]
    assert await stats.message(store, "nope") is None
    listed = await stats.messages(store, search="B@X")
    assert [m["message_id"] for m in listed] == [mail.message_id] and listed[0]["opens"] == 1
    assert listed[0]["subject"] == "Hello" and listed[0]["recipients"] == 2
    assert await stats.message_body(store, mail.message_id) == b"Subject: Hello\r\n\r\nhi\r\n"
    assert ("news", "Send", 1) in await stats.totals(store)

    # 400 days later: raw events and counters are gone, all-time totals stay.
    later = NOW.timestamp() + 400 * 86400
    await retention.prune(store, cfg.parse({"storage": {"path": "x", "stats_retention_days": 300}}), now=later)
    assert await stats.events(store) == []
    gone = await stats.stats(store, configuration_set=None, period=stats.Period(NOW - timedelta(days=2), NOW))
    assert gone["counts"]["send"] == 0
    assert ("news", "Send", 1) in await stats.totals(store)


async def test_readonly_store_reads_and_refuses_writes(tmp_path: Path, store: Store) -> None:
    await Traffic(store).send("news", ["a@x.test"], NOW)
    reader = Store(str(tmp_path / "relay.db"))
    await reader.open(readonly=True)  # beside the writer, as the CLI runs beside relay serve
    try:
        listed = await stats.messages(reader)
        assert [m["recipients"] for m in listed] == [1]
        with pytest.raises(RuntimeError, match="not open for writing"):
            await reader.write([("DELETE FROM messages", ())])
    finally:
        await reader.close()


async def test_every_event_type_is_counted_whatever_the_destinations(store: Store) -> None:
    """Complaint, Subscription, Rendering Failure, Reject and DeliveryDelay count too, for
    a set whose only destination takes Send (SES's sending statistics count everything)."""
    t = Traffic(store)
    at = NOW - timedelta(hours=5)
    mail = await t.send("plain", ["a@x.test", "b@x.test"], at)
    await t.event("plain", records.delivery_delay_event(
        mail, recipients=[records.DelayedRecipient(email_address="a@x.test", status="4.4.1",
                                               diagnostic_code="smtp; 421 later")],
        delay_type="TransientCommunicationFailure", expiration_time=at + timedelta(hours=4), timestamp=at,
        reporting_mta="relay.test"), "a@x.test")
    await t.delivered("plain", mail, "a@x.test", at)
    await t.delivered("plain", mail, "b@x.test", at)
    await t.event("plain", records.complaint_event(mail, recipients=["a@x.test"], timestamp=at, feedback_id="f",
                                                   feedback_type="abuse", user_agent=None, arrival_date=None),
                  "a@x.test")
    prefs = records.TopicPreferences(unsubscribe_all=False, topics=())
    await t.event("plain", records.subscription_event(
        mail, recipient="b@x.test", contact_list="plain", timestamp=at, source="UnsubscribeHeader",
        new=records.TopicPreferences(unsubscribe_all=True, topics=()), old=prefs), "b@x.test")
    await t.event("plain", records.rendering_failure_event(mail, error_message="bad", recipient="b@x.test"), "b@x.test")
    await t.event("plain", records.reject_event(mail, reason="Bad content"), None)

    doc = await stats.stats(store, configuration_set="plain", period=stats.parse_period(None, None, now=NOW))
    assert doc["counts"] == {"send": 1, "reject": 1, "bounce": 0, "complaint": 1, "delivery": 2, "open": 0,
                             "click": 0, "renderingFailure": 1, "deliveryDelay": 1, "subscription": 1}
    assert doc["rates"]["complaint"] == 0.5  # complaining / delivered recipients
    totals = {(cset, kind): n for cset, kind, n in await stats.totals(store)}
    assert {kind: totals[("plain", kind)] for kind in ("Complaint", "Subscription", "Rendering Failure", "Reject")} \
        == {"Complaint": 1, "Subscription": 1, "Rendering Failure": 1, "Reject": 1}


async def test_default_retention_keeps_counters_longer_than_raw_events(store: Store) -> None:
    """[storage] retention_days (60) for raw events, stats_retention_days (400) for counters."""
    t = Traffic(store)
    mail = await t.send("news", ["a@x.test"], NOW)
    await t.opened("news", mail, "a@x.test", NOW)
    config = cfg.parse({"storage": {"path": "x"}})
    day = stats.Period(NOW - timedelta(hours=1), NOW + timedelta(hours=1))

    await retention.prune(store, config, now=NOW.timestamp() + 59 * 86400)
    assert len(await stats.events(store)) == 2
    await retention.prune(store, config, now=NOW.timestamp() + 61 * 86400)
    assert await stats.events(store) == []  # raw events: 60 days
    kept = await stats.stats(store, configuration_set="news", period=day)
    assert (kept["counts"]["send"], kept["counts"]["open"], kept["unique"]["open"]) == (1, 1, 1)
    await retention.prune(store, config, now=NOW.timestamp() + 399 * 86400)
    assert (await stats.stats(store, configuration_set="news", period=day))["counts"]["send"] == 1
    await retention.prune(store, config, now=NOW.timestamp() + 401 * 86400)
    assert (await stats.stats(store, configuration_set="news", period=day))["counts"]["send"] == 0  # counters: 400
