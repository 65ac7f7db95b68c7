# Pure bookkeeping for the listeners' limits: connections per client address and in
# total (Postfix: smtpd_client_connection_count_limit, process_limit), a log throttle
# so an attack costs one line per interval instead of one per attempt, and the split
# of the process's file-descriptor budget between the listeners.
# SharedCounters hold the per-client counts that several serving processes share.
from __future__ import annotations

import mmap
import multiprocessing
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_PER_CLIENT = 50  # Postfix smtpd_client_connection_count_limit


class SharedCounters:
    """Counters per client address shared by the serving processes (made before they
    fork), as Postfix's anvil server counts for all its smtpd processes.

    One counter (and window start) per hash of the address, in an anonymous shared
    mapping, changed under one inter-process lock. Two addresses that share a counter
    share its cap: rare with 16,384 of them, and it only ever refuses sooner. Should
    the lock be unavailable (a process died holding it), callers fall back to their
    own process's count rather than wait.
    """

    SLOTS = 1 << 14
    LOCK_WAIT = 0.5  # seconds

    def __init__(self) -> None:
        self._mem = mmap.mmap(-1, self.SLOTS * 16)  # MAP_SHARED: the forked processes see one copy
        self._counts = memoryview(self._mem)[: self.SLOTS * 8].cast("q")
        self._starts = memoryview(self._mem)[self.SLOTS * 8:].cast("d")
        self._lock = multiprocessing.get_context("fork").Lock()

    def _slot(self, key: str) -> int:
        return zlib.crc32(key.encode("utf-8", "surrogatepass")) % self.SLOTS

    def take(self, key: str, cap: int) -> bool | None:
        """Count one more for key unless it has reached cap; None: the lock was unavailable."""
        i = self._slot(key)
        if not self._lock.acquire(timeout=self.LOCK_WAIT):
            return None
        try:
            if self._counts[i] >= cap:
                return False
            self._counts[i] += 1
            return True
        finally:
            self._lock.release()

    def give(self, key: str) -> None:
        i = self._slot(key)
        if not self._lock.acquire(timeout=self.LOCK_WAIT):
            return
        try:
            self._counts[i] = max(self._counts[i] - 1, 0)
        finally:
            self._lock.release()

    def value(self, key: str) -> int:
        return int(self._counts[self._slot(key)])

    def add_in_window(self, key: str, now: float, window: float, n: int) -> int | None:
        """The count for key within the window that started at its first count, after
        adding n (0: just read it); None: the lock was unavailable."""
        i = self._slot(key)
        if not self._lock.acquire(timeout=self.LOCK_WAIT):
            return None
        try:
            if self._counts[i] and now - self._starts[i] >= window:
                self._counts[i] = 0
            if n and not self._counts[i]:
                self._starts[i] = now
            self._counts[i] += n
            return int(self._counts[i])
        finally:
            self._lock.release()


@dataclass(frozen=True)
class SharedLimits:
    """What the serving processes count together: made once, before they fork."""

    smtp_clients: SharedCounters = field(default_factory=SharedCounters)
    tracking_clients: SharedCounters = field(default_factory=SharedCounters)
    auth_failures: SharedCounters = field(default_factory=SharedCounters)


class ConnectionLimits:
    """Counts open connections per client address and in total; refuses beyond the caps.

    The total is this process's (its own file descriptors); with `shared`, the
    per-client count is every serving process's together.
    """

    def __init__(self, *, total: int, per_client: int, shared: SharedCounters | None = None) -> None:
        self.total = total
        self.per_client = per_client
        self._shared = shared
        self._open: dict[str, int] = {}
        self.count = 0

    def acquire(self, client: str) -> str | None:
        """Take a slot for a new connection: None, or why it is refused ("total" / "per_client")."""
        if self.count >= self.total:
            return "total"
        n = self._open.get(client, 0)
        if n >= self.per_client:
            return "per_client"
        if self._shared is not None and self._shared.take(client, self.per_client) is False:
            return "per_client"
        self._open[client] = n + 1
        self.count += 1
        return None

    def release(self, client: str) -> None:
        n = self._open.get(client, 0)
        if n <= 0:
            return
        if self._shared is not None:
            self._shared.give(client)
        self.count -= 1
        if n == 1:
            del self._open[client]  # bounded: only clients with open connections are kept
        else:
            self._open[client] = n - 1

    def open_for(self, client: str) -> int:
        return self._shared.value(client) if self._shared is not None else self._open.get(client, 0)


class LogThrottle:
    """Whether to log an occurrence of `key` now: at most once per `interval` seconds.

    `suppressed(key)` tells how many were swallowed since the last line, so the next
    line can say "(and N more)". Keys are forgotten after their interval, so memory
    stays bounded by the number of distinct keys per interval.
    """

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 10_000) -> None:
        self.interval = interval
        self._clock = clock
        self._max_keys = max_keys
        self._last: dict[str, tuple[float, int]] = {}

    def should_log(self, key: str) -> bool:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval:
            self._last[key] = (last[0], last[1] + 1)
            return False
        if len(self._last) >= self._max_keys:
            self._last = {k: v for k, v in self._last.items() if now - v[0] < self.interval}
            if len(self._last) >= self._max_keys:
                return False  # a flood of distinct keys: stay silent rather than grow
        self._last[key] = (now, 0)
        return True

    def suppressed(self, key: str) -> int:
        """How many occurrences were not logged since the last logged one."""
        last = self._last.get(key)
        return last[1] if last else 0


@dataclass(frozen=True)
class Budget:
    smtp: int  # connections on the SMTP listener
    http: int  # connections on the tracking listener


def connection_budget(nofile: int, *, upstream_connections: int) -> Budget:
    """Split the file descriptors left after the fixed ones between the two listeners.

    Reserved: the SQLite files (db, WAL, shm, reader), the upstream pool, webhook
    sessions, log files, listening sockets and headroom for accept() itself: 64 plus
    two per upstream connection. The tracking port faces the internet and its requests
    are short, so it gets three quarters of the rest; SMTP a quarter.
    """
    free = max(nofile - 64 - 2 * upstream_connections, 40)
    smtp = max(free // 4, 10)
    return Budget(smtp=smtp, http=max(free - smtp, 10))


class MemoryBudget:
    """Bytes that may be held at once across sessions; a reservation that does not fit is refused."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0

    def reserve(self, n: int) -> bool:
        if self.used + n > self.total:
            return False
        self.used += n
        return True

    def release(self, n: int) -> None:
        self.used = max(0, self.used - n)

    @property
    def free(self) -> int:
        return self.total - self.used
