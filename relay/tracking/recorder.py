# Turning a served hit into an Open/Click event, after the answer went out: the
# message's mail object (cached) names the recipient the token's index points to,
# and the event goes to the configuration set's destinations through the bus.
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from relay.events import records
from relay.events.bus import EventBus
from relay.events.records import MailInfo
from relay.limits import LogThrottle
from relay.spool import Spool
from relay.tokens import ClickClaim, LegacyClickClaim, LegacyOpenClaim, OpenClaim

log = logging.getLogger("relay.tracking")

Claim = OpenClaim | ClickClaim | LegacyOpenClaim | LegacyClickClaim
_CACHE_SIZE = 10_000


class HitRecorder:
    def __init__(self, *, spool: Spool, bus: EventBus, window_seconds: float,
                 clock: Callable[[], float] = time.time) -> None:
        self._spool = spool
        self._bus = bus
        self._window = window_seconds
        self._clock = clock
        self._mail_cache: OrderedDict[str, tuple[str | None, MailInfo]] = OrderedDict()
        self._pending: set[asyncio.Task[None]] = set()
        self._bad_index = LogThrottle(interval=3600.0)  # a forged-looking index: once per message an hour

    def hit(self, claim: Claim, ip: str, user_agent: str) -> None:
        """Record later, off the request path (the answer must not wait for the disk)."""
        now = self._clock()
        if now - claim.sent_at > self._window:
            return  # past the window: still served, no longer recorded (SES: 60 days)
        task = asyncio.create_task(self._record(claim, now, ip, user_agent))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def _record(self, claim: Claim, now: float, ip: str, ua: str) -> None:
        try:
            found = await self._mail(claim.message_id)
            if found is None:
                log.info("hit for unknown message %s: not recorded", claim.message_id)
                return
            cset, mail = found
            recipient = self._recipient(claim, mail)
            if recipient is None:
                return
            ts = datetime.fromtimestamp(now, timezone.utc)
            record: Any
            if isinstance(claim, (ClickClaim, LegacyClickClaim)):
                record = records.click_event(mail, recipient=recipient, timestamp=ts, ip_address=ip,
                                             user_agent=ua, link=claim.url, link_tags=claim.link_tags)
            else:
                record = records.open_event(mail, recipient=recipient, timestamp=ts,
                                            ip_address=ip, user_agent=ua)
            self._bus.publish(cset, record, recipient)
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

    async def _mail(self, message_id: str) -> tuple[str | None, MailInfo] | None:
        cached = self._mail_cache.get(message_id)
        if cached is not None:
            self._mail_cache.move_to_end(message_id)
            return cached
        found = await self._spool.mail(message_id)
        if found is not None:
            self._mail_cache[message_id] = found
            if len(self._mail_cache) > _CACHE_SIZE:
                self._mail_cache.popitem(last=False)
        return found
