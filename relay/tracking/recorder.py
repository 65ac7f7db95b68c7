# Turning a served hit into an Open/Click event, after the answer went out: the
# message's mail object (cached, with its JSON text) names the recipient the token's
# index points to, and the event goes to the configuration set's destinations through
# the bus. A hit only appends to a queue; one recorder task drains it in chunks (no
# task per hit), yielding to the event loop between chunks so answers keep flowing.
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relay.events import records
from relay.events.bus import EventBus
from relay.events.records import MailInfo
from relay.limits import LogThrottle
from relay.spool import Spool
from relay.tokens import ClickClaim, LegacyClickClaim, LegacyOpenClaim, OpenClaim

log = logging.getLogger("relay.tracking")

Claim = OpenClaim | ClickClaim | LegacyOpenClaim | LegacyClickClaim
Hit = tuple[Claim, float, str, str]  # claim, unix time, client ip, User-Agent
_CACHE_SIZE = 10_000
# Hits recorded per event-loop turn: enough to spread the loop's overhead, few enough
# that the answers queued behind a chunk wait well under a millisecond or two.
CHUNK = 32


@dataclass(frozen=True, slots=True)
class _Mail:
    """A cached message: what every hit on it needs, serialized once."""

    configuration_set: str | None
    info: MailInfo
    json: str  # records.mail_json(info)
    head: dict[str, Any]  # the mail fields make_event and the counting read


class HitRecorder:
    def __init__(self, *, spool: Spool, bus: EventBus, window_seconds: float,
                 clock: Callable[[], float] = time.time, chunk: int = CHUNK) -> None:
        self._spool = spool
        self._bus = bus
        self._window = window_seconds
        self._clock = clock
        self._chunk = max(1, chunk)
        self._mail_cache: OrderedDict[str, _Mail] = OrderedDict()
        self._queue: list[Hit] = []
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._bad_index = LogThrottle(interval=3600.0)  # a forged-looking index: once per message an hour

    def hit(self, claim: Claim, ip: str, user_agent: str) -> None:
        """Record later, off the request path (the answer must not wait for the disk)."""
        now = self._clock()
        if now - claim.sent_at > self._window:
            return  # past the window: still served, no longer recorded (SES: 60 days)
        self._queue.append((claim, now, ip, user_agent))
        if self._wake is None or self._task is None or self._task.done():
            self._start()
        assert self._wake is not None and self._idle is not None
        self._idle.clear()
        self._wake.set()

    async def drain(self) -> None:
        """Until every hit queued so far is handed to the bus."""
        if self._idle is None or (self._idle.is_set() and not self._queue):
            return
        if self._task is None or self._task.done():
            self._start()
        assert self._wake is not None
        self._wake.set()
        await self._idle.wait()

    async def close(self) -> None:
        """Drain, then end the recorder task."""
        await self.drain()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _start(self) -> None:
        if self._wake is None or self._idle is None:
            self._wake, self._idle = asyncio.Event(), asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tracking-recorder")

    async def _run(self) -> None:
        assert self._wake is not None and self._idle is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                chunk = self._queue[:self._chunk]
                del self._queue[:self._chunk]
                for hit in chunk:
                    await self._record(*hit)  # never raises but CancelledError
                await asyncio.sleep(0)  # let the answers queued meanwhile go out
            self._idle.set()

    async def _record(self, claim: Claim, now: float, ip: str, ua: str) -> None:
        try:
            found = self._mail_cache.get(claim.message_id)
            if found is not None:
                self._mail_cache.move_to_end(claim.message_id)
            else:
                found = await self._mail(claim.message_id)
                if found is None:
                    log.info("hit for unknown message %s: not recorded", claim.message_id)
                    return
            recipient = self._recipient(claim, found.info)
            if recipient is None:
                return
            ts = records.iso_seconds(now)
            if isinstance(claim, (ClickClaim, LegacyClickClaim)):
                body = records.click_event_json(found.json, recipient=recipient, timestamp=ts, ip_address=ip,
                                                user_agent=ua, link=claim.url,
                                                link_tags=records.event_json(claim.link_tags) if claim.link_tags
                                                else "{}")
                record: dict[str, Any] = {"eventType": "Click", "mail": found.head, "click": {
                    "timestamp": ts, "link": claim.url, "linkTags": claim.link_tags}}
            else:
                body = records.open_event_json(found.json, recipient=recipient, timestamp=ts, ip_address=ip,
                                               user_agent=ua)
                record = {"eventType": "Open", "mail": found.head, "open": {"timestamp": ts}}
            self._bus.publish(found.configuration_set, record, recipient, body=body)
        except Exception:  # noqa: BLE001 - a recording failure must never affect serving
            log.exception("could not record a hit for %s", claim.message_id)

    def _recipient(self, claim: Claim, mail: MailInfo) -> str | None:
        if isinstance(claim, (LegacyOpenClaim, LegacyClickClaim)):
            return claim.recipient  # v1 tokens carried the address
        if 0 <= claim.recipient_index < len(mail.destination):
            return mail.destination[claim.recipient_index]
        # Only a token signed with our key gets here, so this is a bug or a key shared
        # with another relay: say so, but never per hit.
        if self._bad_index.should_log(claim.message_id):
            log.warning("hit for %s names recipient #%d of %d: not recorded", claim.message_id,
                        claim.recipient_index, len(mail.destination))
        return None

    async def _mail(self, message_id: str) -> _Mail | None:
        found = await self._spool.mail(message_id)
        if found is None:
            return None
        cset, info = found
        mail = records.mail_object(info)
        entry = _Mail(cset, info, records.event_json(mail),
                      {"messageId": mail["messageId"], "timestamp": mail["timestamp"], "tags": mail["tags"]})
        self._mail_cache[message_id] = entry
        if len(self._mail_cache) > _CACHE_SIZE:
            self._mail_cache.popitem(last=False)
        return entry
