# The `sqlite` event destination: one row per event in the events table of the
# relay's SQLite file, queryable by message, recipient, type and time. The row is
# committed with the state change it reports, so it is stored once that is.
from __future__ import annotations

from relay.events.bus import Event
from relay.store import Statement

INSERT = ("INSERT OR IGNORE INTO events(event_id, destination, configuration_set, message_id, "
          "recipient, event_type, timestamp, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


class SqliteDestination:
    def __init__(self, name: str) -> None:
        self.name = name

    def statements(self, event: Event) -> list[Statement]:
        return [(INSERT, (event.event_id, self.name, event.configuration_set, event.message_id,
                          event.recipient, event.event_type, event.timestamp, event.body))]

    def wake(self) -> None:
        return None  # nothing further to publish: the row is the event

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
