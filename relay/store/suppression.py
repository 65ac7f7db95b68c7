# The SQL of the account suppression list (suppressed_addresses) and of SES list
# management's contacts (contacts, contact_topics): statement builders for callers
# that commit them with other rows (a bounce's outcome, a Subscription event), and reads.
from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from relay.events.records import TopicPreferences
from relay.store import Statement, Store
from relay.suppression import SuppressedAddress, normalize

_UPSERT = ("INSERT INTO suppressed_addresses(address, reason, last_update, message_id) VALUES (?, ?, ?, ?) "
           "ON CONFLICT(address) DO UPDATE SET reason = excluded.reason, last_update = excluded.last_update, "
           "message_id = excluded.message_id")
_COLUMNS = "address, reason, last_update, message_id"
_BATCH = 500  # addresses per IN (...) query, well under SQLite's variable limit


def suppress_statements(address: str, reason: str, message_id: str | None, at: float) -> list[Statement]:
    """Put `address` on the list (or update its entry): reason "BOUNCE" or "COMPLAINT"."""
    if reason not in ("BOUNCE", "COMPLAINT"):
        raise ValueError(f"reason must be BOUNCE or COMPLAINT, not {reason!r}")
    return [(_UPSERT, (normalize(address), reason, at, message_id))]


def remove_statements(address: str) -> list[Statement]:
    return [("DELETE FROM suppressed_addresses WHERE address = ?", (normalize(address),))]


def import_statements(rows: Iterable[tuple[str, str]], at: float) -> list[Statement]:
    """A whole import file, committed at once (all or nothing)."""
    return [s for address, reason in rows for s in suppress_statements(address, reason, None, at)]


async def is_suppressed(store: Store, address: str) -> SuppressedAddress | None:
    return (await suppressed(store, [address])).get(normalize(address))


async def suppressed(store: Store, addresses: Sequence[str]) -> dict[str, SuppressedAddress]:
    """The entries of those addresses that are on the list, by lower-cased address."""
    wanted = list(dict.fromkeys(normalize(a) for a in addresses))
    found: dict[str, SuppressedAddress] = {}
    for i in range(0, len(wanted), _BATCH):
        chunk = wanted[i:i + _BATCH]
        rows = await _rows(store, f"SELECT {_COLUMNS} FROM suppressed_addresses WHERE address IN "
                                  f"({','.join('?' * len(chunk))})", chunk, by_key=True)
        found.update((row.address, row) for row in rows)
    return found


async def entries(store: Store, *, limit: int | None = None, search: str | None = None) -> list[SuppressedAddress]:
    """The list by address (optionally only addresses containing `search`)."""
    where, params = ("WHERE address LIKE ? ESCAPE '\\'", [f"%{_like(search.lower())}%"]) if search else ("", [])
    sql = f"SELECT {_COLUMNS} FROM suppressed_addresses {where} ORDER BY address"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return await _rows(store, sql, params)


async def count(store: Store) -> int:
    try:
        row = await store.fetchone("SELECT COUNT(*) FROM suppressed_addresses")
    except sqlite3.OperationalError:  # a file from before the list: empty
        return 0
    return int(row[0]) if row else 0


async def _rows(store: Store, sql: str, params: Sequence[object], *,
                by_key: bool = False) -> list[SuppressedAddress]:
    try:
        rows = await (store.lookup(sql, params) if by_key else store.fetchall(sql, params))
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):  # opened read-only, from before the list existed
            return []
        raise
    return [SuppressedAddress(address=a, reason=r, last_update=float(t), message_id=m) for a, r, t, m in rows]


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# --- contacts (SES list management) --------------------------------------------------


async def preferences(store: Store, contact_list: str, address: str) -> TopicPreferences:
    """A contact's preferences; one relay never saw is subscribed to everything."""
    address = normalize(address)
    row = await store.fetchone("SELECT unsubscribe_all FROM contacts WHERE contact_list = ? AND address = ?",
                               (contact_list, address))
    topics = await store.fetchall("SELECT topic, status FROM contact_topics WHERE contact_list = ? AND address = ? "
                                  "ORDER BY topic", (contact_list, address))
    return TopicPreferences(unsubscribe_all=bool(row and row[0]), topics=tuple((t, s) for t, s in topics))


def opt_out_statements(contact_list: str, address: str, topic: str | None, at: float) -> list[Statement]:
    """The contact opts out of `topic`, or of the whole list when topic is None."""
    address = normalize(address)
    stmts: list[Statement] = [(
        "INSERT INTO contacts(contact_list, address, unsubscribe_all, last_update) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(contact_list, address) DO UPDATE SET "
        "unsubscribe_all = MAX(unsubscribe_all, excluded.unsubscribe_all), last_update = excluded.last_update",
        (contact_list, address, int(topic is None), at))]
    if topic is not None:
        stmts.append(("INSERT INTO contact_topics(contact_list, address, topic, status) VALUES (?, ?, ?, 'OptOut') "
                      "ON CONFLICT(contact_list, address, topic) DO UPDATE SET status = 'OptOut'",
                      (contact_list, address, topic)))
    return stmts


async def unsubscribed(store: Store, contact_list: str, topic: str | None,
                       addresses: Sequence[str]) -> set[str]:
    """The lower-cased addresses among these that opted out of the list, or of the topic."""
    wanted = list(dict.fromkeys(normalize(a) for a in addresses))
    out: set[str] = set()
    for i in range(0, len(wanted), _BATCH):
        chunk = wanted[i:i + _BATCH]
        marks = ",".join("?" * len(chunk))
        rows = await store.fetchall(
            f"SELECT address FROM contacts WHERE contact_list = ? AND unsubscribe_all = 1 AND address IN ({marks})",
            (contact_list, *chunk))
        if topic is not None:
            rows += await store.fetchall(
                "SELECT address FROM contact_topics WHERE contact_list = ? AND topic = ? AND status = 'OptOut' "
                f"AND address IN ({marks})", (contact_list, topic, *chunk))
        out.update(r[0] for r in rows)
    return out
