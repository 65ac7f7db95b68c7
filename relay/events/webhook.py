# The `webhook` event destination: each SES-format event is POSTed, signed, to one URL,
# bare (format "ses") or in an SNS envelope (format "sns", events/sns.py). Events wait in
# the webhook_outbox table until the receiver answers 2xx, so they survive outages and
# restarts; one sender task per destination posts a small window of them at once, in
# order per message; an event refused for max_retry_seconds moves to the dead letters.
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Callable

import aiohttp

from relay.events import sns
from relay.events.bus import Event
from relay.events.records import for_recipient, iso
from relay.store import Statement, Store
from relay.store import webhooks as sql
from relay.store.counting import dead_letter_statements

log = logging.getLogger("relay.events")

# 408 and 429 mean "not now"; every other 4xx means "never", but may come from a
# receiver mid-deploy, so it is tried this many times in all (counted in the outbox
# row, so a restart does not reset it) before it moves to the dead letters.
RETRY_LATER = frozenset({408, 429})
MAX_REJECTIONS = 3
CLOSE_GRACE = 2.0  # seconds close() gives the sender to flush what is due
# With nothing due, the sender still looks this often: `relay webhook replay` (another
# process) puts rows back without waking it.
IDLE_POLL = 2.0
MAX_RETRY_SECONDS = 3 * 86400.0
WINDOW = 4


@dataclass(frozen=True)
class _Outcome:
    delay: float | None  # None: delivered; else seconds until the next try
    reason: str = ""  # why not delivered, for the dead letter
    rejected: bool = False  # a 4xx that means "never"


def sign(secret: str, timestamp: str, body: str) -> str:
    """The X-Relay-Signature value: HMAC-SHA256 over "timestamp.body", Stripe-style,
    so a receiver can refuse a replayed request by its age."""
    mac = hmac.new(secret.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def verify(secret: str, timestamp: str, body: str, header: str, *,
           now: float, tolerance: float = 300) -> bool:
    """For receivers: True if `header` signs this body and timestamp, and the
    timestamp is within `tolerance` seconds of `now`."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs(now - sent) > tolerance:
        return False
    expected = sign(secret, timestamp, body).encode()
    # Comma-separated signatures are accepted, so a secret can be rolled over.
    return any(hmac.compare_digest(expected, part.strip().encode()) for part in header.split(","))


def retry_after(value: str | None) -> float | None:
    """Retry-After in delay-seconds (RFC 9110 §10.2.3); the HTTP-date form is
    ignored and the usual backoff applies instead."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class WebhookDestination:
    def __init__(self, name: str, url: str, secret: str | None, store: Store, *,
                 clock: Callable[[], float] = time.time, first_delay: float = 1.0,
                 max_delay: float = 300.0, timeout: float = 10.0, format: str = "ses",
                 topic_arn: str | None = None, mail_destination: str = "message",
                 max_retry_seconds: float = MAX_RETRY_SECONDS, window: int = WINDOW,
                 base_url: str = "http://127.0.0.1:8080", idle_poll: float = IDLE_POLL,
                 confirm_key: bytes | None = None) -> None:
        self.name = name
        self._url = url  # kept out of logs: it may carry a token
        self._secret = secret or None
        self._store = store
        self._clock = clock
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._timeout = timeout
        self._sns = format == "sns"
        self.topic_arn = self._topic_arn = topic_arn or sns.default_topic_arn(name)
        self._unsubscribe_url = sns.unsubscribe_url(base_url, self._topic_arn)
        self._per_recipient = mail_destination == "recipient"
        self._max_retry = max_retry_seconds
        self._window = window
        self._idle_poll = idle_poll
        # confirm_subscription: a SubscriptionConfirmation first; nothing else until confirmed.
        self._confirm_key = confirm_key if self._sns else None
        self._confirmed = self._confirm_key is None
        self._asked = False
        self._asks = 0  # SubscriptionConfirmation POSTs that failed, for their backoff
        self._base_url = base_url
        self._wake = asyncio.Event()  # a row was committed, or close() was called
        self._stopping = asyncio.Event()  # cuts a backoff wait short on close()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._posting: dict[int, asyncio.Task[None]] = {}  # outbox seq -> its POST, at most `window`

    def statements(self, event: Event) -> list[Statement]:
        # Only an outbox row here, committed by the caller: the HTTP work is all in the
        # sender task, so a slow or dead endpoint never slows the caller or the others.
        return [(sql.INSERT, (event.event_id, self.name, event.message_id, self.body(event), self._clock()))]

    def body(self, event: Event) -> str:
        """What is POSTed for the event: the record (for this destination's mail_destination),
        bare or as the Message of an SNS notification whose MessageId is the event id."""
        record = event.body
        if self._per_recipient:
            parsed = json.loads(record)
            narrowed = for_recipient(parsed, event.recipient)
            if narrowed is not parsed:
                record = json.dumps(narrowed, separators=(",", ":"), ensure_ascii=False)
        if not self._sns:
            return record
        return sns.notification(message_id=event.event_id, topic_arn=self._topic_arn, message=record,
                                timestamp=iso(datetime.fromtimestamp(self._clock(), UTC)),
                                unsubscribe_url=self._unsubscribe_url)

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            headers={"User-Agent": "relay-webhook"})
        # Whatever an earlier run left in the outbox is read first by the sender.
        self._task = asyncio.create_task(self._run(), name=f"webhook-destination {self.name}")

    async def close(self) -> None:
        self._closing = True
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, CLOSE_GRACE)
            except TimeoutError:
                pass  # wait_for cancelled the sender; unsent rows stay for the next start
            self._task = None
            # The sender cancelled its POSTs in flight as it ended: let them finish cancelling.
            await asyncio.gather(*self._posting.values(), return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        try:
            while True:
                try:
                    self._wake.clear()  # before the read, so a commit during it is not missed
                    if not self._confirmed:
                        if self._closing:
                            return
                        await self._subscribe()
                        continue
                    if await self._launch():
                        continue
                    if self._closing and not self._posting:
                        return  # nothing due (what is left is backing off)
                    # Woken by a commit (any message), a POST ending, or the next head coming due.
                    await self._pause(await self._until_next())
                except Exception:  # noqa: BLE001 - the sender must outlive any one failure
                    log.exception("webhook %s: sender error", self.name)
                    if self._closing:
                        return
                    await self._stopped_or(self._first_delay)
        finally:
            # Cancelled by close() after its grace: POSTs in flight are abandoned, their rows kept.
            for task in self._posting.values():
                task.cancel()

    async def _launch(self) -> bool:
        """Start POSTs for due heads (one per message) while the window has room; whether any."""
        room = self._window - len(self._posting)
        if room <= 0:
            return False
        rows = await sql.due(self._store, self.name, now=self._clock(), limit=room, busy=tuple(self._posting))
        for row in rows:
            self._posting[row[0]] = asyncio.create_task(self._post(row), name=f"webhook {self.name} {row[1]}")
        return bool(rows)

    async def _until_next(self) -> float:
        if len(self._posting) >= self._window:
            return self._idle_poll  # a POST ending wakes the sender
        due = await sql.next_due(self._store, self.name, busy=tuple(self._posting))
        wait = self._idle_poll if due is None else due - self._clock()
        return max(0.001, min(wait, self._max_delay, self._idle_poll))

    async def _post(self, row: tuple[Any, ...]) -> None:
        """POST one head and commit what came of it (before it can be read, and sent, again)."""
        seq, event_id, body, attempts = row[:4]
        try:
            outcome = await self._attempt(event_id, body, attempts + 1)
            stmts = self._settle(row, outcome, self._clock())
            try:
                await self._store.write(stmts)
            except Exception as e:  # noqa: BLE001 - at-least-once: the event is sent again
                log.error("webhook %s: outcome of event %s not recorded, it will be sent again: %s",
                          self.name, event_id, e)
        except Exception:  # noqa: BLE001 - one POST's bug must not end the sender
            log.exception("webhook %s: event %s: sender error", self.name, event_id)
        finally:
            self._posting.pop(seq, None)
            self._wake.set()

    async def _subscribe(self) -> None:
        """Until the consumer fetched SubscribeURL: ask once (again after a failure), then poll."""
        assert self._confirm_key is not None
        if await self._store.get_setting(sns.confirmed_key(self.name)) == self._topic_arn:
            log.info("webhook %s: subscription to %s confirmed", self.name, self._topic_arn)
            self._confirmed = True
            return
        if not self._asked:
            token = sns.confirm_token(self._confirm_key, self.name, self._topic_arn)
            message_id = str(uuid.uuid4())
            body = sns.subscription_confirmation(
                message_id=message_id, topic_arn=self._topic_arn, token=token,
                subscribe_url=sns.subscribe_url(self._base_url, self._topic_arn, token),
                timestamp=iso(datetime.fromtimestamp(self._clock(), UTC)))
            self._asks += 1
            outcome = await self._attempt(message_id, body, self._asks, message_type="SubscriptionConfirmation")
            if outcome.delay is not None:
                await self._stopped_or(outcome.delay)
                return
            self._asked = True
            log.info("webhook %s: SubscriptionConfirmation sent; events wait until its SubscribeURL is fetched",
                     self.name)
        await self._stopped_or(self._idle_poll)

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass

    async def _stopped_or(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    def _settle(self, row: tuple[Any, ...], outcome: _Outcome, now: float) -> list[Statement]:
        """The outbox change for one POST's outcome: delete, defer, or move to the dead letters."""
        seq, event_id, _, attempts, refused_since, rejections = row
        attempt = attempts + 1
        if outcome.delay is None:
            return [(sql.DELETE, (seq,))]
        since = now if refused_since is None else refused_since
        rejections += int(outcome.rejected)
        if rejections >= MAX_REJECTIONS or now - since >= self._max_retry:
            why = (f"{outcome.reason}, {rejections} times" if rejections >= MAX_REJECTIONS
                   else f"{outcome.reason}; refused for {now - since:.0f}s")
            log.error("webhook %s: event %s moved to the dead letters (%s); "
                      "`relay webhook replay` sends it again", self.name, event_id, why,
                      extra=self._fields(event_id, "dead_letter", attempt=attempt, reply=outcome.reason))
            return [*sql.bury(seq, attempts=attempt, refused_since=since, now=now, reason=outcome.reason),
                    *dead_letter_statements(configuration_set=self.name.partition("/")[0], at=now)]
        return [(sql.DEFER, (attempt, now + outcome.delay, since, rejections, seq))]

    async def _attempt(self, event_id: str, body: str, attempt: int, *,
                       message_type: str = "Notification") -> _Outcome:
        """POST one event (or a SubscriptionConfirmation); what came of it."""
        assert self._session is not None, "start() first"
        timestamp = str(int(self._clock()))
        headers = {"Content-Type": "application/json", "X-Relay-Event-Id": event_id,
                   "X-Relay-Timestamp": timestamp}
        if self._sns:
            headers.update(sns.headers(message_id=event_id, topic_arn=self._topic_arn, message_type=message_type))
        if self._secret is not None:
            headers["X-Relay-Signature"] = sign(self._secret, timestamp, body)
        try:
            # No redirects: following one would send the signed event elsewhere.
            async with self._session.post(self._url, data=body.encode(), headers=headers,
                                          allow_redirects=False) as resp:
                status, after = resp.status, retry_after(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            why = _describe(e, self._timeout)
            log.warning("webhook %s: event %s not delivered (%s), attempt %d; will retry",
                        self.name, event_id, why, attempt,
                        extra=self._fields(event_id, "retry", attempt=attempt, reply=why))
            return _Outcome(self._backoff(attempt), why)
        if 200 <= status < 300:
            return _Outcome(None)
        reason = f"HTTP {status}"
        if 400 <= status < 500 and status not in RETRY_LATER:
            log.warning("webhook %s: event %s rejected with HTTP %d, attempt %d; %d rejections move it "
                        "to the dead letters", self.name, event_id, status, attempt, MAX_REJECTIONS,
                        extra=self._fields(event_id, "retry", attempt=attempt, status=status))
            return _Outcome(self._backoff(attempt), reason, rejected=True)
        # 5xx, 408, 429 and anything unexpected (3xx, 1xx): the receiver's problem,
        # so the event is retried, until max_retry_seconds.
        log.warning("webhook %s: event %s got HTTP %d, attempt %d; will retry",
                    self.name, event_id, status, attempt,
                    extra=self._fields(event_id, "retry", attempt=attempt, status=status))
        if after is not None:
            return _Outcome(min(after, self._max_delay), reason)  # capped: a bogus value must not stall
        return _Outcome(self._backoff(attempt), reason)

    def _fields(self, event_id: str, outcome: str, **more: Any) -> dict[str, Any]:
        """The structured fields of a failure's log line (never the URL: it may hold a token)."""
        return {"destination": self.name, "event_id": event_id, "outcome": outcome, **more}

    def _backoff(self, attempt: int) -> float:
        # first_delay, doubling, up to max_delay (exponent capped: no float overflow).
        return min(self._max_delay, self._first_delay * 2.0 ** min(attempt - 1, 62))


def _describe(e: BaseException, timeout: float) -> str:
    # Never str() of an arbitrary client error: some include the URL, which may hold a token.
    if isinstance(e, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"cannot connect: {e.os_error.strerror or type(e.os_error).__name__}"
    return type(e).__name__
