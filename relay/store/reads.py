# The read model's queries (all SQL of the read side): hourly counters, top links and
# link tags, events, messages and their timelines, totals for /metrics. Each takes an
# open Store and returns plain rows; relay.stats shapes them.
from __future__ import annotations

import json
from typing import Any, Sequence

from relay.store import Store

Rows = list[tuple[Any, ...]]


def _set_filter(configuration_set: str | None, column: str = "configuration_set") -> tuple[str, list[Any]]:
    if configuration_set is None:
        return "", []
    return f" AND {column} = ?", [configuration_set]


async def hourly(store: Store, *, configuration_set: str | None, since: float, until: float,
                 tag: tuple[str, str] | None = None) -> Rows:
    """(hour, metric, count) summed over sets; hours starting in [since's hour, until)."""
    start = int(since // 3600 * 3600)
    where, params = _set_filter(configuration_set)
    if tag is None:
        return await store.fetchall(
            f"SELECT hour, metric, SUM(count) FROM stats_hourly WHERE hour >= ? AND hour < ?{where} "
            "GROUP BY hour, metric ORDER BY hour", [start, until, *params])
    return await store.fetchall(
        f"SELECT hour, metric, SUM(count) FROM stats_tags_hourly WHERE name = ? AND value = ? AND hour >= ? "
        f"AND hour < ?{where} GROUP BY hour, metric ORDER BY hour", [tag[0], tag[1], start, until, *params])


async def top_links(store: Store, *, configuration_set: str | None, since: float, until: float,
                    tag: tuple[str, str] | None = None, limit: int = 10) -> Rows:
    """(link, clicks, unique_clicks), most clicked first."""
    where, params = _set_filter(configuration_set)
    if tag is None:
        return await store.fetchall(
            f"SELECT link, SUM(clicks) AS c, SUM(unique_clicks) FROM stats_links_hourly WHERE hour >= ? "
            f"AND hour < ?{where} GROUP BY link ORDER BY c DESC, link LIMIT ?",
            [int(since // 3600 * 3600), until, *params, limit])
    # With a tag filter: from the events themselves (slower; tags per link are not counted ahead).
    return await store.fetchall(
        f"SELECT link, COUNT(*) AS c, COUNT(DISTINCT message_id || char(10) || recipient) FROM event_log "
        f"WHERE event_type = 'Click' AND at >= ? AND at < ?{where} AND message_id IN "
        f"(SELECT message_id FROM message_tags WHERE name = ? AND value = ?) "
        f"GROUP BY link ORDER BY c DESC, link LIMIT ?", [since, until, *params, tag[0], tag[1], limit])


async def link_tags(store: Store, *, configuration_set: str | None, since: float, until: float,
                    tag: tuple[str, str] | None = None) -> Rows:
    """(name, value, clicks) of ses:tags on clicked links, most clicked first."""
    where, params = _set_filter(configuration_set)
    if tag is None:
        return await store.fetchall(
            f"SELECT name, value, SUM(clicks) AS c FROM stats_link_tags_hourly WHERE hour >= ? AND hour < ?"
            f"{where} GROUP BY name, value ORDER BY c DESC, name, value",
            [int(since // 3600 * 3600), until, *params])
    rows = await store.fetchall(
        f"SELECT json_extract(body, '$.click.linkTags') FROM event_log WHERE event_type = 'Click' "
        f"AND at >= ? AND at < ?{where} AND message_id IN "
        f"(SELECT message_id FROM message_tags WHERE name = ? AND value = ?)", [since, until, *params, *tag])
    counts: dict[tuple[str, str], int] = {}
    for (raw,) in rows:
        for name, values in (json.loads(raw) if raw else {}).items():
            for value in values:
                counts[(name, value)] = counts.get((name, value), 0) + 1
    return [(n, v, c) for (n, v), c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


async def events(store: Store, *, types: Sequence[str] = (), message_id: str | None = None,
                 recipient: str | None = None, configuration_set: str | None = None,
                 since: float | None = None, after_seq: int = 0, limit: int = 1000) -> Rows:
    """(seq, body) in seq order."""
    sql = "SELECT seq, body FROM event_log WHERE seq > ?"
    params: list[Any] = [after_seq]
    if types:
        sql += f" AND event_type IN ({', '.join('?' * len(types))})"
        params += list(types)
    for column, value in (("message_id", message_id), ("recipient", recipient),
                          ("configuration_set", configuration_set)):
        if value is not None:
            sql += f" AND {column} = ?"
            params.append(value)
    if since is not None:
        sql += " AND at >= ?"
        params.append(since)
    return await store.fetchall(sql + " ORDER BY seq LIMIT ?", [*params, limit])


async def messages(store: Store, *, since: float | None, until: float | None, configuration_set: str | None,
                   recipient: str | None, search: str | None, limit: int) -> Rows:
    """(id, accepted_at, mail_from, configuration_set, subject, recipients, pending, delivered,
    bounced, opens, clicks), newest first."""
    sql = ("SELECT m.id, m.accepted_at, m.mail_from, m.configuration_set, "
           "json_extract(m.mail, '$.common_headers.subject'), "
           "(SELECT COUNT(*) FROM recipients r WHERE r.message_id = m.id), "
           "(SELECT COUNT(*) FROM recipients r WHERE r.message_id = m.id AND r.state = 'pending'), "
           "(SELECT COUNT(*) FROM recipients r WHERE r.message_id = m.id AND r.state = 'delivered'), "
           "(SELECT COUNT(*) FROM recipients r WHERE r.message_id = m.id AND r.state = 'bounced'), "
           "(SELECT COALESCE(SUM(opens), 0) FROM engagement e WHERE e.message_id = m.id), "
           "(SELECT COALESCE(SUM(clicks), 0) FROM engagement e WHERE e.message_id = m.id) "
           "FROM messages m WHERE 1")
    params: list[Any] = []
    if since is not None:
        sql += " AND m.accepted_at >= ?"
        params.append(since)
    if until is not None:
        sql += " AND m.accepted_at < ?"
        params.append(until)
    if configuration_set is not None:
        if configuration_set == "":
            sql += " AND m.configuration_set IS NULL"
        else:
            sql += " AND m.configuration_set = ?"
            params.append(configuration_set)
    if recipient is not None:
        sql += " AND EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.recipient = ?)"
        params.append(recipient)
    if search:
        like = "%" + search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        sql += (" AND (lower(COALESCE(json_extract(m.mail, '$.common_headers.subject'), '')) LIKE ? ESCAPE '\\' "
                "OR lower(COALESCE(m.configuration_set, '')) LIKE ? ESCAPE '\\' OR EXISTS (SELECT 1 FROM "
                "recipients r WHERE r.message_id = m.id AND lower(r.recipient) LIKE ? ESCAPE '\\'))")
        params += [like, like, like]
    return await store.fetchall(sql + " ORDER BY m.id DESC LIMIT ?", [*params, limit])


async def message(store: Store, message_id: str) -> tuple[tuple[Any, ...] | None, Rows, Rows]:
    """(messages row (configuration_set, mail JSON) or None, [(recipient, state)], [(recipient, body)])."""
    row = await store.fetchone("SELECT configuration_set, mail FROM messages WHERE id = ?", (message_id,))
    recipients = await store.fetchall(
        "SELECT recipient, state FROM recipients WHERE message_id = ? ORDER BY rowid", (message_id,))
    events = await store.fetchall(
        "SELECT recipient, body FROM event_log WHERE message_id = ? ORDER BY at, seq", (message_id,))
    return row, recipients, events


async def message_body(store: Store, message_id: str) -> bytes | None:
    """A message's body: inline, or (1 MB or more) in message_bodies; None once dropped."""
    row = await store.fetchone("SELECT COALESCE(m.data, b.data) FROM messages m LEFT JOIN message_bodies b "
                               "ON b.message_id = m.id WHERE m.id = ?", (message_id,))
    return bytes(row[0]) if row and row[0] is not None else None


async def totals(store: Store) -> Rows:
    """(configuration_set, event_type, count), all time."""
    return await store.fetchall("SELECT configuration_set, event_type, count FROM event_totals "
                                "ORDER BY configuration_set, event_type")


async def queue(store: Store) -> Rows:
    """(state, recipients)."""
    return await store.fetchall("SELECT state, COUNT(*) FROM recipients GROUP BY state ORDER BY state")


async def webhook_outbox(store: Store) -> Rows:
    """(destination, waiting events)."""
    return await store.fetchall("SELECT destination, COUNT(*) FROM webhook_outbox GROUP BY destination "
                                "ORDER BY destination")
