# The read-only queries /metrics needs that relay.stats does not offer: gauges of the
# spool and the webhook outbox, and the all-time event totals. SQL outside the store
# layer only here (reviewed with the store's owner); nothing in this module writes.
from __future__ import annotations

from relay.store import Store


async def queue_recipients(store: Store) -> dict[str, int]:
    """Recipients in the spool by state (pending, delivered, bounced)."""
    rows = await store.fetchall("SELECT state, count(*) FROM recipients GROUP BY state")
    return {str(state): int(n) for state, n in rows}


async def webhook_outbox(store: Store) -> dict[str, int]:
    """Events waiting in the webhook outbox, by destination ("set/destination")."""
    rows = await store.fetchall("SELECT destination, count(*) FROM webhook_outbox GROUP BY destination")
    return {str(dest): int(n) for dest, n in rows}


async def event_totals(store: Store) -> dict[tuple[str | None, str], int]:
    """All-time events by (configuration set, SES eventType)."""
    rows = await store.fetchall(
        "SELECT configuration_set, event_type, count(*) FROM events GROUP BY configuration_set, event_type")
    return {(cset, str(et)): int(n) for cset, et, n in rows}
