# Benchmark for `relay stats`: the stats document over N events (default 1,000,000)
# written exactly as relay writes them (EventBus.statements: event_log, hourly
# counters, engagement), beside the baseline measured on the same file in the same
# run: the hand-written SQL a user needed before, counting json_extract()ed bodies.
# Run: .venv/bin/python bench/stats_bench.py [--events N] [--keep PATH]
from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta

from relay import config as cfg
from relay import stats
from relay.events import records
from relay.events.bus import EventBus
from relay.intake import new_message_id
from relay.store import Store

SETS = ["news", "alerts", "receipts"]
NOW = datetime.now(UTC).replace(microsecond=0)


async def fill(store: Store, events: int, rng: random.Random) -> int:
    """Sends to 5 recipients each, then deliveries, opens and clicks, spread over 7 days."""
    config = cfg.parse({"configuration_sets": {name: {} for name in SETS}})
    bus = EventBus(config.configuration_sets, {}, store)
    written, batch = 0, []
    while written < events:
        at = NOW - timedelta(seconds=rng.randrange(7 * 86400))
        rcpts = [f"r{rng.randrange(10**6)}@example.org" for _ in range(5)]
        cset = rng.choice(SETS)
        mail = records.mail_info(message_id=new_message_id(at.timestamp()), timestamp=at, source="a@example.com",
                                 destination=rcpts, header_block=b"Subject: Weekly\r\n\r\n", configuration_set=cset,
                                 message_tags={"campaign": [f"c{rng.randrange(20)}"]}, source_ip="127.0.0.1",
                                 caller_identity=None)
        batch += bus.statements(cset, records.send_event(mail), recipient_count=5)
        written += 1
        for rcpt in rcpts:
            batch += bus.statements(cset, records.delivery_event(
                mail, recipients=[rcpt], timestamp=at, smtp_response="250 ok", reporting_mta="relay.test",
                remote_mta_ip=None), rcpt)
            written += 1
            for _ in range(rng.choice((0, 0, 1, 2))):
                batch += bus.statements(cset, records.open_event(
                    mail, recipient=rcpt, timestamp=at + timedelta(minutes=5), ip_address="127.0.0.9",
                    user_agent="bench"), rcpt)
                written += 1
            if rng.random() < 0.3:
                batch += bus.statements(cset, records.click_event(
                    mail, recipient=rcpt, timestamp=at + timedelta(minutes=6), ip_address="127.0.0.9",
                    user_agent="bench", link=f"https://example.com/{rng.randrange(50)}",
                    link_tags={"article": [f"a{rng.randrange(5)}"]}), rcpt)
                written += 1
        if len(batch) > 50_000:
            await store.write(batch)
            batch = []
    await store.write(batch)
    return written


async def timed(label: str, fn, rounds: int = 3) -> tuple[str, float]:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        await fn()
        best = min(best, time.perf_counter() - t)
    return label, best


async def main(args: argparse.Namespace) -> None:
    path = args.keep or os.path.join(tempfile.mkdtemp(prefix="relay-stats-bench-"), "relay.db")
    store = Store(path)
    await store.open()
    try:
        if not (await store.fetchone("SELECT COUNT(*) FROM event_log"))[0]:  # type: ignore[index]
            t = time.perf_counter()
            n = await fill(store, args.events, random.Random(7))
            print(f"wrote {n:,} events in {time.perf_counter() - t:.1f} s ({path})")
        count = (await store.fetchone("SELECT COUNT(*) FROM event_log"))[0]  # type: ignore[index]
        period = stats.parse_period(None, None, now=NOW + timedelta(seconds=1))
        since = period.since.timestamp()

        async def baseline() -> None:
            # What a user wrote before: per-type counts and unique opens from the bodies.
            await store.fetchall("SELECT json_extract(body, '$.eventType'), COUNT(*) FROM event_log "
                                 "WHERE at >= ? GROUP BY 1", (since,))
            await store.fetchall("SELECT COUNT(DISTINCT json_extract(body, '$.mail.messageId') || "
                                 "json_extract(body, '$.open.recipient')) FROM event_log "
                                 "WHERE at >= ? AND json_extract(body, '$.eventType') = 'Open'", (since,))

        rows = [
            await timed("baseline: SQL over JSON bodies", baseline),
            await timed("relay stats (7 days, all sets)", lambda: stats.stats(store, configuration_set=None, period=period)),
            await timed("relay stats --by hour", lambda: stats.stats(store, configuration_set=None, period=period, by="hour")),
            await timed("relay stats --configuration-set news --by day",
                        lambda: stats.stats(store, configuration_set="news", period=period, by="day")),
            await timed("relay stats --tag campaign=c3 (slow path for links)",
                        lambda: stats.stats(store, configuration_set=None, period=period, tag=("campaign", "c3"))),
        ]
        print(f"\n{count:,} events; best of 3 rounds")
        width = max(len(label) for label, _ in rows)
        base = rows[0][1]
        for label, seconds in rows:
            print(f"{label:<{width}}  {seconds * 1000:9.1f} ms  {base / seconds:6.1f}x baseline")
    finally:
        await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--keep", help="reuse (or create) this database file")
    asyncio.run(main(parser.parse_args()))
