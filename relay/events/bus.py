# Fan-out of SES-format event records to the event destinations of their
# configuration set. Publishing never blocks and never raises: each destination
# queues what it is given, so a failing or slow one cannot hold up the others.
from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

from relay.config import ConfigurationSet
from relay.events.records import EVENT_TYPE_KEYS as EVENT_KEYS

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

    def put(self, event: Event) -> None: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...


def make_event(configuration_set: str, record: Mapping[str, Any], recipient: str | None) -> Event:
    event_type = record["eventType"]
    # The per-type object is the record's one key besides eventType and mail (SES §3.1);
    # its timestamp, else the mail's (Send has none).
    child = next((v for k, v in record.items() if k not in ("eventType", "mail")), None) or {}
    timestamp = child.get("timestamp") or record["mail"]["timestamp"]
    return Event(
        event_id=str(uuid.uuid4()), configuration_set=configuration_set,
        message_id=record["mail"]["messageId"], recipient=recipient, event_type=event_type,
        timestamp=timestamp, body=json.dumps(record, separators=(",", ":"), ensure_ascii=False),
    )


class EventBus:
    def __init__(self, sets: Mapping[str, ConfigurationSet],
                 destinations: Mapping[tuple[str, str], Destination]) -> None:
        self._sets = sets
        self._destinations = destinations

    def publish(self, configuration_set: str | None, record: Mapping[str, Any],
                recipient: str | None = None) -> None:
        """Hand the record to every enabled destination of the set that matches its type."""
        cset = self._sets.get(configuration_set or "")
        if cset is None:
            return  # SES: no configuration set, no event publishing
        key = EVENT_KEYS[record["eventType"]]
        event: Event | None = None
        for dest in cset.event_destinations:
            if not dest.matches(key):
                continue
            if event is None:
                event = make_event(cset.name, record, recipient)
            try:
                self._destinations[(cset.name, dest.name)].put(event)
            except Exception:  # noqa: BLE001 - one destination must not stop the others
                log.exception("event destination %s/%s failed to take an event", cset.name, dest.name)
