# The read side: sending statistics, events and per-recipient timelines, shared by the
# CLI (`relay stats|events|messages|message`), the admin API and the dashboard. Period
# parsing, bucketing and rates are pure; the queries themselves live in the store
# (relay.store.Reader), so a PostgreSQL backend only has to provide that interface.
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Sequence

from relay.events.records import EVENT_TYPE_KEYS, iso, mail_object
from relay.spool import mail_from_json
from relay.store import Store, counting, reads, webhooks

# The `counts` keys, in SES's v1/config spelling (matching_event_types).
COUNT_KEYS = tuple(EVENT_TYPE_KEYS.values())
NO_SET = ""  # configuration_set filter value for mail sent without a configuration set
DEFAULT_PERIOD = timedelta(days=7)
_RELATIVE = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class PeriodError(ValueError):
    """A --since/--until value that is neither relative (7d, 24h, 30m, 2w) nor ISO-8601."""


@dataclass(frozen=True)
class Period:
    since: datetime  # inclusive, tz-aware UTC
    until: datetime  # exclusive, tz-aware UTC


def parse_time(value: str, *, now: datetime) -> datetime:
    """'7d' / '24h' / '30m' / '2w' before now, or an ISO-8601 date or time (UTC if no zone)."""
    value = value.strip()
    m = _RELATIVE.match(value)
    if m:
        return now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise PeriodError(f"expected a duration like 7d, 24h, 30m or an ISO-8601 time, got {value!r}") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def parse_period(since: str | None, until: str | None, *, now: datetime) -> Period:
    """The period to read; default: the last 7 days up to now."""
    end = parse_time(until, now=now) if until else now
    start = parse_time(since, now=now) if since else end - DEFAULT_PERIOD
    if start >= end:
        raise PeriodError(f"since ({iso(start)}) must be before until ({iso(end)})")
    return Period(start, end)


def buckets(period: Period, by: str) -> list[datetime]:
    """Bucket starts on whole UTC hours or days covering the period (empty ones included)."""
    if by not in ("hour", "day"):
        raise PeriodError(f"by must be hour or day, got {by!r}")
    step = timedelta(hours=1) if by == "hour" else timedelta(days=1)
    start = period.since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if by == "day":
        start = start.replace(hour=0)
    out: list[datetime] = []
    t = start
    while t < period.until and len(out) < 100_000:  # bounded: a century of days
        out.append(t)
        t += step
    return out


def rate(numerator: int, denominator: int) -> float | None:
    return None if denominator == 0 else numerator / denominator


def shape(*, period: Period, configuration_set: str | None, counts: dict[str, int], recipients: int,
          unique: dict[str, int], delivered_open_tracked: int, delivered_click_tracked: int,
          delivered_recipients: int, bounced_recipients: int, complaining_recipients: int,
          top_links: Sequence[dict[str, Any]], link_tags: Sequence[dict[str, Any]],
          series: Sequence[dict[str, Any]] | None, webhook_dead_letters: int = 0) -> dict[str, Any]:
    """The `relay stats --json` document (and /api/stats), exactly issue 8's keys; plus
    webhook_dead_letters only when some webhook event was dead-lettered in the period
    (issue 11 counts them in relay stats; a healthy relay's document keeps the exact keys)."""
    doc: dict[str, Any] = {
        "since": iso(period.since),
        "until": iso(period.until),
        "configuration_set": configuration_set,
        "counts": {k: counts.get(k, 0) for k in COUNT_KEYS},
        "recipients": recipients,
        "unique": {"open": unique.get("open", 0), "click": unique.get("click", 0)},
        "rates": {
            "delivery": rate(delivered_recipients, recipients),
            "bounce": rate(bounced_recipients, recipients),
            "complaint": rate(complaining_recipients, delivered_recipients),
            "open": rate(unique.get("open", 0), delivered_open_tracked),
            "click": rate(unique.get("click", 0), delivered_click_tracked),
        },
        "top_links": list(top_links),
        "link_tags": list(link_tags),
    }
    if webhook_dead_letters:
        # Webhook events moved to the dead letters in the period (relay webhook dead-letters).
        doc["webhook_dead_letters"] = webhook_dead_letters
    if series is not None:
        doc["series"] = list(series)
    return doc


# --- queries (the contract shared by the CLI, the admin API and the dashboard) -------------
# `store` is an open relay.store.Store; none of these write.

async def stats(store: Store, *, configuration_set: str | None, period: Period, by: str | None = None,
                tag: tuple[str, str] | None = None) -> dict[str, Any]:
    """The `relay stats --json` document for the period; configuration_set None = all,
    NO_SET = mail without a set; `by` adds `series`; `tag` keeps messages with that tag.

    Counts come from hourly counters, so a period edge inside an hour counts that whole
    hour. Unique opens (clicks) count each message-recipient pair once, in the hour of
    its first open (click)."""
    since, until = period.since.timestamp(), period.until.timestamp()
    rows = await reads.hourly(store, configuration_set=configuration_set, since=since, until=until, tag=tag)
    total: dict[str, int] = {}
    per_hour: dict[int, dict[str, int]] = {}
    for hour, metric, count in rows:
        total[metric] = total.get(metric, 0) + count
        bucket = per_hour.setdefault(int(hour), {})
        bucket[metric] = bucket.get(metric, 0) + count
    links = await reads.top_links(store, configuration_set=configuration_set, since=since, until=until, tag=tag)
    ltags = await reads.link_tags(store, configuration_set=configuration_set, since=since, until=until, tag=tag)
    series = None
    if by is not None:
        starts = buckets(period, by)
        width = 3600 if by == "hour" else 86400
        grouped: dict[int, dict[str, int]] = {}
        for hour, metrics in per_hour.items():
            start = hour - hour % width
            into = grouped.setdefault(start, {})
            for metric, count in metrics.items():
                into[metric] = into.get(metric, 0) + count
        series = [{"start": iso(t), "counts": {k: grouped.get(int(t.timestamp()), {}).get(k, 0) for k in COUNT_KEYS}}
                  for t in starts]
    return shape(
        period=period, configuration_set=configuration_set, counts=total, recipients=total.get("recipients", 0),
        unique={"open": total.get("uniqueOpen", 0), "click": total.get("uniqueClick", 0)},
        delivered_open_tracked=total.get("deliveredOpenTracked", 0),
        delivered_click_tracked=total.get("deliveredClickTracked", 0),
        delivered_recipients=total.get("delivery", 0), bounced_recipients=total.get("bounce", 0),
        complaining_recipients=total.get("complaint", 0),
        top_links=[{"link": link, "clicks": clicks, "unique_clicks": unique} for link, clicks, unique in links],
        link_tags=[{"name": name, "value": value, "clicks": clicks} for name, value, clicks in ltags],
        series=series, webhook_dead_letters=total.get(counting.DEAD_LETTER, 0))


def event_types(types: Sequence[str]) -> list[str]:
    """SES eventTypes from eventTypes or their keys ("open" -> "Open"); raises ValueError."""
    by_key = {key.lower(): event_type for event_type, key in EVENT_TYPE_KEYS.items()}
    by_key.update({event_type.lower(): event_type for event_type in EVENT_TYPE_KEYS})
    out = []
    for t in types:
        found = by_key.get(t.strip().lower())
        if found is None:
            raise ValueError(f"unknown event type {t!r} (known: {', '.join(COUNT_KEYS)})")
        out.append(found)
    return out


async def events(store: Store, *, types: Sequence[str] = (), message_id: str | None = None,
                 recipient: str | None = None, configuration_set: str | None = None,
                 since: datetime | None = None, after_seq: int = 0, limit: int = 1000) -> list[tuple[int, dict[str, Any]]]:
    """(seq, SES record) in seq order, seq > after_seq; `types` are SES eventTypes ("Open")
    or their keys ("open"). --follow polls with the last seq seen."""
    rows = await reads.events(store, types=event_types(types), message_id=message_id, recipient=recipient,
                              configuration_set=configuration_set,
                              since=since.timestamp() if since else None, after_seq=after_seq, limit=limit)
    return [(int(seq), json.loads(body)) for seq, body in rows]


async def messages(store: Store, *, period: Period | None = None, configuration_set: str | None = None,
                   recipient: str | None = None, search: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Newest first: {"message_id", "timestamp" (ISO), "source", "subject", "configuration_set",
    "recipients" (count), "states": {"pending", "delivered", "bounced"}, "opens", "clicks"};
    `search` matches recipient, subject or set (case-insensitive substring)."""
    rows = await reads.messages(store, since=period.since.timestamp() if period else None,
                                until=period.until.timestamp() if period else None,
                                configuration_set=configuration_set, recipient=recipient, search=search, limit=limit)
    return [{
        "message_id": mid, "timestamp": iso(datetime.fromtimestamp(at, UTC)), "source": source,
        "subject": subject, "configuration_set": cset, "recipients": n,
        "states": {"pending": pending, "delivered": delivered, "bounced": bounced},
        "opens": opens, "clicks": clicks,
    } for mid, at, source, cset, subject, n, pending, delivered, bounced, opens, clicks in rows]


async def message(store: Store, message_id: str) -> dict[str, Any] | None:
    """{"message": <SES mail object>, "recipients": [{"address", "state", "events": [<SES
    records in time order, Send first>]}]}, or None when relay knows no such message."""
    row, recipients, events = await reads.message(store, message_id)
    records = [(rcpt, json.loads(body)) for rcpt, body in events]
    if row is not None:
        mail = mail_object(mail_from_json(row[1]))
    elif records:
        mail = records[0][1]["mail"]  # pruned from the spool: the events still say it
    else:
        return None
    addresses = [(address, state) for address, state in recipients]
    if not addresses:
        seen = dict.fromkeys(r for r, _ in records if r is not None)
        addresses = [(address, "unknown") for address in seen]
    return {"message": mail, "recipients": [
        {"address": address, "state": state,
         "events": [record for rcpt, record in records if rcpt is None or rcpt == address]}
        for address, state in addresses]}


async def message_body(store: Store, message_id: str) -> bytes | None:
    """The message as spooled (what went upstream before per-recipient instrumentation),
    kept for [storage] body_retention_days after it was accepted; None after."""
    return await reads.message_body(store, message_id)


async def totals(store: Store) -> list[tuple[str, str, int]]:
    """(configuration_set, SES eventType, count) since the storage file was created (/metrics)."""
    return [(str(c), str(t), int(n)) for c, t, n in await reads.totals(store)]


async def queue(store: Store) -> dict[str, int]:
    """Recipients per state (pending, delivered, bounced) in the spool."""
    return {str(state): int(n) for state, n in await reads.queue(store)}


async def webhook_outbox(store: Store) -> dict[str, int]:
    """Events waiting per webhook destination ("set/destination")."""
    return {str(d): int(n) for d, n in await reads.webhook_outbox(store)}


async def webhook_dead_letters(store: Store) -> dict[str, int]:
    """Events in the dead letters per webhook destination ("set/destination")."""
    return {str(d): int(n) for d, n in await webhooks.dead_letter_counts(store)}


async def dead_letters(store: Store, destination: str | None = None) -> list[dict[str, Any]]:
    """The dead letters, oldest first (`relay webhook dead-letters --json`): the event as
    it is posted (`body`: the SES record, or the SNS envelope), and why it was given up."""
    return [{
        "event_id": event_id, "destination": dest, "message_id": message_id, "attempts": attempts,
        "refused_since": iso(datetime.fromtimestamp(since, UTC)), "dead_at": iso(datetime.fromtimestamp(at, UTC)),
        "reason": reason, "body": json.loads(body),
    } for _, event_id, dest, message_id, body, attempts, since, at, reason in await webhooks.dead_letters(store, destination)]
