# The `sqlite` event destination: one row per event in the events table of the
# relay's SQLite file, queryable by message, recipient, type and time.
from __future__ import annotations

import asyncio
import logging

from relay.events.bus import Event
from relay.store import Store

log = logging.getLogger("relay.events")

INSERT = ("INSERT OR IGNORE INTO events(event_id, destination, configuration_set, message_id, "
          "recipient, event_type, timestamp, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


class SqliteDestination:
    def __init__(self, name: str, store: Store) -> None:
        self.name = name
        self._store = store

    def put(self, event: Event) -> None:
        # Queued on the store's group-commit writer: never waits for the disk.
        fut = self._store.write_nowait([(INSERT, (
            event.event_id, self.name, event.configuration_set, event.message_id,
            event.recipient, event.event_type, event.timestamp, event.body))])
        fut.add_done_callback(self._done)

    def _done(self, fut: asyncio.Future[None]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            log.error("sqlite destination %s: event not stored: %s", self.name, fut.exception())

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None  # the store flushes its queue when it closes
