# The `webhook` event destination: each SES-format event is POSTed, signed, to one URL.
# Events wait in the webhook_outbox table until the receiver answers 2xx, so they
# survive outages and restarts; one sender task per destination delivers them in order.
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import time
from typing import Any, Callable, Sequence

import aiohttp

from relay.events.bus import Event
from relay.store import Statement, Store

log = logging.getLogger("relay.events")

# 408 and 429 mean "not now"; every other 4xx means "never", but may come from a
# receiver mid-deploy, so it is tried this many times in all before being dropped.
RETRY_LATER = frozenset({408, 429})
MAX_REJECTIONS = 3
CLOSE_GRACE = 2.0  # seconds close() gives the sender to flush what is due
BATCH = 100  # rows read per query; their deletes share one commit

INSERT = ("INSERT INTO webhook_outbox(event_id, destination, body, attempts, next_attempt_at) "
          "VALUES (?, ?, ?, 0, ?)")
HEAD = ("SELECT seq, event_id, body, attempts, next_attempt_at FROM webhook_outbox "
        "WHERE destination = ? ORDER BY seq LIMIT ?")
DELETE = "DELETE FROM webhook_outbox WHERE seq = ?"
DEFER = "UPDATE webhook_outbox SET attempts = ?, next_attempt_at = ? WHERE seq = ?"


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
                 max_delay: float = 300.0, timeout: float = 10.0) -> None:
        self.name = name
        self._url = url  # kept out of logs: it may carry a token
        self._secret = secret or None
        self._store = store
        self._clock = clock
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._timeout = timeout
        self._wake = asyncio.Event()  # a row was committed, or close() was called
        self._stopping = asyncio.Event()  # cuts a backoff wait short on close()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        # 4xx count of the head row; in memory, so a restart grants a few more tries.
        self._rejections: dict[int, int] = {}

    def statements(self, event: Event) -> list[Statement]:
        # Only an outbox row here, committed by the caller: the HTTP work is all in the
        # sender task, so a slow or dead endpoint never slows the caller or the others.
        return [(INSERT, (event.event_id, self.name, event.body, self._clock()))]

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
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while True:
            try:
                self._wake.clear()  # before the read, so a commit during it is not missed
                rows = await self._store.fetchall(HEAD, (self.name, BATCH))
                if not rows:
                    if self._closing:
                        return
                    await self._wake.wait()
                    continue
                wait = min(rows[0][4] - self._clock(), self._max_delay)
                if wait > 0:
                    if self._closing:
                        return  # nothing due: the head is backing off
                    # Head-of-line: the others wait behind it, so order is kept
                    # and a failing endpoint gets one request per backoff step.
                    await self._pause(wait)
                    continue
                await self._deliver(rows)
            except Exception:  # noqa: BLE001 - the sender must outlive any one failure
                log.exception("webhook %s: sender error", self.name)
                if self._closing:
                    return
                await self._pause(self._first_delay)

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _deliver(self, rows: Sequence[tuple[Any, ...]]) -> None:
        deletes: list[asyncio.Future[None]] = []
        for seq, event_id, body, attempts, _ in rows:
            delay = await self._attempt(seq, event_id, body, attempts + 1)
            if delay is None:  # delivered or dropped
                self._rejections.pop(seq, None)
                deletes.append(self._store.write_nowait([(DELETE, (seq,))]))
                continue
            await self._store.write([(DEFER, (attempts + 1, self._clock() + delay, seq))])
            break
        # The deletes must be committed before the next read, or a delivered row
        # would be read, and sent, again.
        for result in await asyncio.gather(*deletes, return_exceptions=True):
            if isinstance(result, BaseException):
                log.error("webhook %s: delivered event not removed, it will be sent again: %s",
                          self.name, result)

    async def _attempt(self, seq: int, event_id: str, body: str, attempt: int) -> float | None:
        """POST one event; None when it is done with, else the seconds to wait."""
        assert self._session is not None, "start() first"
        timestamp = str(int(self._clock()))
        headers = {"Content-Type": "application/json", "X-Relay-Event-Id": event_id,
                   "X-Relay-Timestamp": timestamp}
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
            return self._backoff(attempt)
        if 200 <= status < 300:
            return None
        if 400 <= status < 500 and status not in RETRY_LATER:
            rejections = self._rejections.get(seq, 0) + 1
            if rejections >= MAX_REJECTIONS:
                log.error("webhook %s: event %s dropped after HTTP %d (%d rejections)",
                          self.name, event_id, status, rejections,
                          extra=self._fields(event_id, "dropped", attempt=attempt, status=status))
                return None
            self._rejections[seq] = rejections
            log.warning("webhook %s: event %s rejected with HTTP %d (%d of %d); will retry",
                        self.name, event_id, status, rejections, MAX_REJECTIONS,
                        extra=self._fields(event_id, "retry", attempt=attempt, status=status))
            return self._backoff(attempt)
        # 5xx, 408, 429 and anything unexpected (3xx, 1xx): the receiver's problem,
        # so the event is kept and retried for as long as it takes.
        log.warning("webhook %s: event %s got HTTP %d, attempt %d; will retry",
                    self.name, event_id, status, attempt,
                    extra=self._fields(event_id, "retry", attempt=attempt, status=status))
        if after is not None:
            return min(after, self._max_delay)  # capped: a bogus value must not stall the queue
        return self._backoff(attempt)

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
