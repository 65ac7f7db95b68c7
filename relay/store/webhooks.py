# The webhook destinations' SQL: the outbox each sender posts from, and the dead
# letters an endpoint never took (listed and replayed by `relay webhook`).
from __future__ import annotations

from typing import Any, Collection

from relay.store import Statement, Store

Rows = list[tuple[Any, ...]]

INSERT = ("INSERT INTO webhook_outbox(event_id, destination, message_id, body, attempts, next_attempt_at) "
          "VALUES (?, ?, ?, ?, 0, ?)")
# A message's oldest row is its head; the rows behind it wait for it (order per message).
_HEAD = ("NOT EXISTS (SELECT 1 FROM webhook_outbox p WHERE p.destination = o.destination "
         "AND p.message_id = o.message_id AND p.seq < o.seq)")
_DUE = ("SELECT seq, event_id, body, attempts, refused_since, rejections FROM webhook_outbox o "
        f"WHERE destination = ? AND next_attempt_at <= ? AND {_HEAD}{{busy}} ORDER BY seq LIMIT ?")
_NEXT_DUE = f"SELECT MIN(next_attempt_at) FROM webhook_outbox o WHERE destination = ? AND {_HEAD}{{busy}}"
DELETE = "DELETE FROM webhook_outbox WHERE seq = ?"
DEFER = ("UPDATE webhook_outbox SET attempts = ?, next_attempt_at = ?, refused_since = ?, rejections = ? "
         "WHERE seq = ?")
_BURY = ("INSERT INTO webhook_dead_letters(event_id, destination, message_id, body, attempts, refused_since, "
         "dead_at, reason) SELECT event_id, destination, message_id, body, ?, ?, ?, ? FROM webhook_outbox "
         "WHERE seq = ?")
_FILTER = "(? IS NULL OR destination = ?)"


def _busy(seqs: Collection[int]) -> str:
    return f" AND seq NOT IN ({', '.join('?' * len(seqs))})" if seqs else ""


async def due(store: Store, destination: str, *, now: float, limit: int, busy: Collection[int] = ()) -> Rows:
    """(seq, event_id, body, attempts, refused_since, rejections) of the heads due now, oldest
    first, but those in `busy` (being posted)."""
    return await store.fetchall(_DUE.format(busy=_busy(busy)), (destination, now, *busy, limit))


async def next_due(store: Store, destination: str, *, busy: Collection[int] = ()) -> float | None:
    """When the next head (not in `busy`) is due; None when there is none."""
    row = await store.fetchone(_NEXT_DUE.format(busy=_busy(busy)), (destination, *busy))
    return None if row is None or row[0] is None else float(row[0])


def bury(seq: int, *, attempts: int, refused_since: float, now: float, reason: str) -> list[Statement]:
    """Move an outbox row to the dead letters."""
    return [(_BURY, (attempts, refused_since, now, reason, seq)), (DELETE, (seq,))]


async def dead_letters(store: Store, destination: str | None = None) -> Rows:
    """(seq, event_id, destination, message_id, body, attempts, refused_since, dead_at, reason), oldest first."""
    return await store.fetchall(
        "SELECT seq, event_id, destination, message_id, body, attempts, refused_since, dead_at, reason "
        f"FROM webhook_dead_letters WHERE {_FILTER} ORDER BY seq", (destination, destination))


async def dead_letter_counts(store: Store) -> Rows:
    """(destination, count) of the dead letters (/metrics)."""
    return await store.fetchall("SELECT destination, COUNT(*) FROM webhook_dead_letters GROUP BY destination")


async def replay(store: Store, destination: str | None, *, now: float) -> int:
    """Move the dead letters (of one destination, or all) back to the end of the outbox, due
    now, with a fresh retry budget; the senders pick them up on their next look. The count."""
    row = await store.fetchone(f"SELECT MAX(seq), COUNT(*) FROM webhook_dead_letters WHERE {_FILTER}",
                               (destination, destination))
    if row is None or row[0] is None:
        return 0
    last = row[0]
    await store.write([
        ("INSERT INTO webhook_outbox(event_id, destination, message_id, body, attempts, next_attempt_at) "
         f"SELECT event_id, destination, message_id, body, 0, ? FROM webhook_dead_letters "
         f"WHERE seq <= ? AND {_FILTER} ORDER BY seq", (now, last, destination, destination)),
        (f"DELETE FROM webhook_dead_letters WHERE seq <= ? AND {_FILTER}", (last, destination, destination)),
    ])
    return int(row[1])
