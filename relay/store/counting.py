# The read model's rows for one event, committed with it (pure statement builders):
# the raw event for `relay events` / timelines, hourly counters for `relay stats`
# (so stats never scan events), all-time totals for /metrics, and the engagement
# marks that make "unique" opens and clicks a counter instead of a DISTINCT scan.
from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable, Mapping, Sequence

from relay.events.records import EVENT_TYPE_KEYS

Statement = tuple[str, Sequence[Any]]  # as relay.store's (not imported: no cycle)

# Tags that would only multiply rows: one value per client address.
UNCOUNTED_TAGS = frozenset({"ses:source-ip"})
# Marks relay's own mail (delivery status notifications): its events are kept for
# timelines but not counted, since it is not mail the application sent.
NOTICE_TAG = "relay:notice"

_LOG = ("INSERT INTO event_log(event_id, configuration_set, message_id, recipient, event_type, at, link, body) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_HOURLY = ("INSERT INTO stats_hourly(hour, configuration_set, metric, count) VALUES (?, ?, ?, ?) "
           "ON CONFLICT(hour, configuration_set, metric) DO UPDATE SET count = count + excluded.count")
_TAGS = ("INSERT INTO stats_tags_hourly(hour, configuration_set, name, value, metric, count) "
         "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(name, value, hour, configuration_set, metric) "
         "DO UPDATE SET count = count + excluded.count")
_TOTALS = ("INSERT INTO event_totals(configuration_set, event_type, count) VALUES (?, ?, 1) "
           "ON CONFLICT(configuration_set, event_type) DO UPDATE SET count = count + 1")
# The first open (click) of a message-recipient pair counts once: the condition is read
# before the engagement row is written, in the same transaction.
def _first(col: str) -> str:
    return f"NOT EXISTS (SELECT 1 FROM engagement WHERE message_id = ? AND recipient = ? AND {col} > 0)"


_UNIQUE_HOURLY = {col: (f"INSERT INTO stats_hourly(hour, configuration_set, metric, count) SELECT ?, ?, ?, 1 "
                        f"WHERE {_first(col)} ON CONFLICT(hour, configuration_set, metric) "
                        f"DO UPDATE SET count = count + 1") for col in ("opens", "clicks")}
_UNIQUE_TAGS = {col: (f"INSERT INTO stats_tags_hourly(hour, configuration_set, name, value, metric, count) "
                      f"SELECT ?, ?, ?, ?, ?, 1 WHERE {_first(col)} "
                      f"ON CONFLICT(name, value, hour, configuration_set, metric) DO UPDATE SET count = count + 1")
                for col in ("opens", "clicks")}
_ENGAGE = ("INSERT INTO engagement(message_id, recipient, opens, clicks) VALUES (?, ?, ?, ?) "
           "ON CONFLICT(message_id, recipient) DO UPDATE SET opens = opens + excluded.opens, "
           "clicks = clicks + excluded.clicks")
_LINK = ("INSERT INTO stats_links_hourly(hour, configuration_set, link, clicks, unique_clicks) "
         "VALUES (?, ?, ?, 1, NOT EXISTS (SELECT 1 FROM link_engagement WHERE message_id = ? AND recipient = ? "
         "AND link = ?)) ON CONFLICT(hour, configuration_set, link) DO UPDATE SET clicks = clicks + 1, "
         "unique_clicks = unique_clicks + excluded.unique_clicks")
_LINK_ENGAGE = "INSERT OR IGNORE INTO link_engagement(message_id, recipient, link) VALUES (?, ?, ?)"
_LINK_TAG = ("INSERT INTO stats_link_tags_hourly(hour, configuration_set, name, value, clicks) VALUES (?, ?, ?, ?, 1) "
             "ON CONFLICT(hour, configuration_set, name, value) DO UPDATE SET clicks = clicks + 1")
_MESSAGE_TAG = "INSERT OR IGNORE INTO message_tags(message_id, name, value, at) VALUES (?, ?, ?, ?)"
# The same counters with the increment as a parameter, for coalesce().
_TOTALS_N = ("INSERT INTO event_totals(configuration_set, event_type, count) VALUES (?, ?, ?) "
             "ON CONFLICT(configuration_set, event_type) DO UPDATE SET count = count + excluded.count")
_LINK_TAG_N = ("INSERT INTO stats_link_tags_hourly(hour, configuration_set, name, value, clicks) "
               "VALUES (?, ?, ?, ?, ?) ON CONFLICT(hour, configuration_set, name, value) "
               "DO UPDATE SET clicks = clicks + excluded.clicks")
_AS_SUM = {_TOTALS: _TOTALS_N, _LINK_TAG: _LINK_TAG_N}  # their increment is a literal 1
_SUMS = {_HOURLY: 3, _TAGS: 5, _TOTALS_N: 2, _LINK_TAG_N: 4}  # statement -> index of its increment


def epoch(timestamp: str) -> float:
    """SES timestamps ('2024-01-01T00:00:00.000Z') as unix seconds."""
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def statements(*, event_id: str, configuration_set: str, message_id: str, recipient: str | None,
               event_type: str, timestamp: str, body: str, record: Mapping[str, Any],
               recipient_count: int | None = None, open_tracked: bool = False,
               click_tracked: bool = False) -> list[Statement]:
    """Every row the read model needs for one event. `recipient_count` is the message's
    real recipient count for Send (mail.destination in events is capped at 50)."""
    at = epoch(timestamp)
    hour = int(at // 3600 * 3600)
    cs = configuration_set
    key = EVENT_TYPE_KEYS[event_type]
    click = record.get("click") if event_type == "Click" else None
    link = click.get("link") if isinstance(click, dict) else None
    tags = [(name, value) for name, values in record["mail"].get("tags", {}).items()
            if name not in UNCOUNTED_TAGS for value in values]

    metrics: list[tuple[str, int]] = [(key, 1)]
    if event_type == "Send":
        metrics.append(("recipients", recipient_count if recipient_count is not None
                        else len(record["mail"].get("destination", ()))))
    elif event_type == "Delivery":
        if open_tracked:
            metrics.append(("deliveredOpenTracked", 1))
        if click_tracked:
            metrics.append(("deliveredClickTracked", 1))

    logged: Statement = (_LOG, (event_id, cs, message_id, recipient, event_type, at, link, body))
    if NOTICE_TAG in record["mail"].get("tags", {}):
        return [logged]
    out: list[Statement] = [logged, (_TOTALS, (cs, event_type))]
    for metric, n in metrics:
        out.append((_HOURLY, (hour, cs, metric, n)))
        out += [(_TAGS, (hour, cs, name, value, metric, n)) for name, value in tags]
    if event_type == "Send":
        out += [(_MESSAGE_TAG, (message_id, name, value, at)) for name, value in tags]
    if event_type in ("Open", "Click") and recipient is not None:
        col, metric = ("opens", "uniqueOpen") if event_type == "Open" else ("clicks", "uniqueClick")
        out.append((_UNIQUE_HOURLY[col], (hour, cs, metric, message_id, recipient)))
        out += [(_UNIQUE_TAGS[col], (hour, cs, name, value, metric, message_id, recipient)) for name, value in tags]
        if link is not None:
            out.append((_LINK, (hour, cs, link, message_id, recipient, link)))
            out.append((_LINK_ENGAGE, (message_id, recipient, link)))
            for name, values in (click or {}).get("linkTags", {}).items():
                out += [(_LINK_TAG, (hour, cs, name, value)) for value in values]
        out.append((_ENGAGE, (message_id, recipient, int(event_type == "Open"), int(event_type == "Click"))))
    return out


class Pending(list[Statement]):
    """Rows waiting for one group commit, with the plain counter increments (hourly, tag,
    total and link-tag counts) of one key summed into one statement, at the place of the
    first, as rows are added (so no pass over a large batch holds up the event loop).
    Safe because nothing in a batch reads those counters and additions commute; every
    other statement keeps its order (the unique-open checks read the engagement rows
    written between them)."""

    def __init__(self, statements: Iterable[Statement] = ()) -> None:
        super().__init__()
        self._first: dict[tuple[str, tuple[Any, ...]], int] = {}
        self.add(statements)

    def add(self, statements: Iterable[Statement]) -> None:
        first = self._first
        for sql, params in statements:
            sql = _AS_SUM.get(sql, sql)
            at = _SUMS.get(sql)
            if at is None:
                self.append((sql, params))
                continue
            if sql in (_TOTALS_N, _LINK_TAG_N) and len(params) == at:
                params = (*params, 1)
            key = (sql, tuple(params[:at]))
            i = first.get(key)
            if i is None:
                first[key] = len(self)
                self.append((sql, tuple(params)))
            else:
                summed = self[i][1]
                self[i] = (sql, (*summed[:at], summed[at] + params[at]))


def coalesce(statements: Iterable[Statement]) -> list[Statement]:
    """The same changes in fewer statements (see Pending)."""
    return list(Pending(statements))


def prune_statements(*, events_before: float, stats_before: float) -> list[Statement]:
    """Drop raw events and hourly counters past their retention (totals are kept)."""
    hour = int(stats_before // 3600 * 3600)
    return [
        ("DELETE FROM event_log WHERE at < ?", (events_before,)),
        ("DELETE FROM message_tags WHERE at < ?", (events_before,)),
        *((f"DELETE FROM {table} WHERE hour < ?", (hour,)) for table in (
            "stats_hourly", "stats_tags_hourly", "stats_links_hourly", "stats_link_tags_hourly")),
    ]


DEAD_LETTER = "deadLetter"  # stats_hourly metric: webhook events moved to the dead letters


def dead_letter_statements(*, configuration_set: str, at: float) -> list[Statement]:
    """Count one webhook event moved to the dead letters, in the hour it happened."""
    return [(_HOURLY, (int(at // 3600 * 3600), configuration_set, DEAD_LETTER, 1))]
