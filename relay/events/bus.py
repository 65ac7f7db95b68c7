# Fan-out of SES-format event records to the event destinations of their
# configuration set, through an outbox: each destination's rows are committed with
# the state change they report, then each destination publishes from its own rows,
# so a failing or slow one cannot hold up the others and a crash loses none.
from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

from relay.config import ConfigurationSet
from relay.events.records import EVENT_TYPE_KEYS as EVENT_KEYS
from relay.limits import LogThrottle
from relay.store import Statement, Store, counting

log = logging.getLogger("relay.events")


@dataclass(frozen=True, kw_only=True)
class Event:
    event_id: str  # unique; the webhook's event id header and the sqlite key
    configuration_set: str
    message_id: str
    recipient: str | None  # the one recipient it concerns, when there is one
    event_type: str  # SES eventType, e.g. "Open"
    timestamp: str  # ISO-8601 UTC with ms
    body: str  # the SES-format JSON record


class Destination(Protocol):
    name: str  # "set/destination"

    def statements(self, event: Event) -> list[Statement]:
        """The rows that hand `event` over, committed by the caller (an outbox)."""
        ...

    def wake(self) -> None:
        """Rows of ours were committed: publish them."""
        ...

    async def start(self) -> None: ...
    async def close(self) -> None: ...


def make_event(configuration_set: str, record: Mapping[str, Any], recipient: str | None,
               body: str | None = None) -> Event:
    event_type = record["eventType"]
    # The per-type object is the record's one key besides eventType and mail (SES §3.1);
    # its timestamp, else the mail's (Send has none).
    child = next((v for k, v in record.items() if k not in ("eventType", "mail")), None) or {}
    timestamp = child.get("timestamp") or record["mail"]["timestamp"]
    return Event(
        event_id=str(uuid.uuid4()), configuration_set=configuration_set,
        message_id=record["mail"]["messageId"], recipient=recipient, event_type=event_type,
        timestamp=timestamp,
        body=json.dumps(record, separators=(",", ":"), ensure_ascii=False) if body is None else body,
    )


class EventBus:
    """Turns SES records into outbox rows for the matching destinations of their set.

    An event is written in the same transaction as the state change it reports
    (statements() + committed()), so a crash never loses one; events that report no
    state change (opens, clicks) go through publish(), which group-commits them and
    retries until they are stored. Destinations publish from their rows afterwards.
    """

    def __init__(self, sets: Mapping[str, ConfigurationSet],
                 destinations: Mapping[tuple[str, str], Destination], store: Store, *,
                 retry_delay: float = 1.0) -> None:
        self._sets = sets
        self._destinations = destinations
        self._store = store
        self._retry_delay = retry_delay
        self._pending = counting.Pending()  # counter increments merged as they come
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._throttle = LogThrottle(60.0)

    def statements(self, configuration_set: str | None, record: Mapping[str, Any],
                   recipient: str | None = None, *, recipient_count: int | None = None,
                   body: str | None = None) -> list[Statement]:
        """Rows that count the event for reading (always: SES's sending statistics count
        everything) and hand it to every enabled destination of the set matching its type."""
        cset = self._sets.get(configuration_set or "")
        event = make_event(cset.name if cset else "", record, recipient, body)
        out: list[Statement] = counting.statements(
            event_id=event.event_id, configuration_set=event.configuration_set, message_id=event.message_id,
            recipient=recipient, event_type=event.event_type, timestamp=event.timestamp, body=event.body,
            record=record, recipient_count=recipient_count,
            open_tracked=bool(cset and cset.tracks_opens), click_tracked=bool(cset and cset.tracks_clicks))
        if cset is None:
            return out  # SES: no configuration set, no event publishing
        key = EVENT_KEYS[event.event_type]
        for dest in cset.event_destinations:
            if dest.matches(key):
                out += self._destinations[(cset.name, dest.name)].statements(event)
        return out

    def committed(self) -> None:
        """Rows from statements() were committed: let the destinations publish them."""
        for dest in self._destinations.values():
            dest.wake()

    def publish(self, configuration_set: str | None, record: Mapping[str, Any],
                recipient: str | None = None, *, body: str | None = None) -> None:
        """Store an event that reports no state change (a hit); never blocks, never raises.

        `body`: the record already serialized (the tracking hit path builds it from
        cached parts); `record` then needs only what make_event and the counting read:
        eventType, mail.messageId/timestamp/tags and the child's timestamp (click: link, linkTags)."""
        try:
            rows = self.statements(configuration_set, record, recipient, body=body)
        except Exception:  # noqa: BLE001 - a bad record must not break the caller
            log.exception("event for %s not built", configuration_set)
            return
        if rows:
            self._pending.add(rows)
            self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-bus")

    async def close(self, grace: float = 5.0) -> None:
        """Store what publish() was given; after `grace` seconds of failing, give up loudly."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, grace)
            except TimeoutError:
                pass
            self._task = None
        if self._pending:
            log.error("%d event row(s) could not be stored before shutdown", len(self._pending))

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                # Everything published since the last commit goes in one transaction.
                batch, self._pending = self._pending, counting.Pending()
                try:
                    await self._store.write(batch)
                except Exception as e:  # noqa: BLE001 - e.g. the disk is full: keep and retry
                    self._pending = counting.Pending([*batch, *self._pending])
                    if self._throttle.should_log("write"):
                        log.error("events not stored yet (%s); %d row(s) kept in memory, retrying",
                                  e, len(self._pending))
                    await asyncio.sleep(self._retry_delay)
                    continue
                self.committed()
            if self._closing:
                return
