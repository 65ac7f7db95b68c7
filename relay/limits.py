# Pure bookkeeping for the listeners' limits: connections per client address and in
# total (Postfix: smtpd_client_connection_count_limit, process_limit), a log throttle
# so an attack costs one line per interval instead of one per attempt, and the split
# of the process's file-descriptor budget between the listeners.
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_PER_CLIENT = 50  # Postfix smtpd_client_connection_count_limit


class ConnectionLimits:
    """Counts open connections per client address and in total; refuses beyond the caps."""

    def __init__(self, *, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self._open: dict[str, int] = {}
        self.count = 0

    def acquire(self, client: str) -> str | None:
        """Take a slot for a new connection: None, or why it is refused ("total" / "per_client")."""
        if self.count >= self.total:
            return "total"
        n = self._open.get(client, 0)
        if n >= self.per_client:
            return "per_client"
        self._open[client] = n + 1
        self.count += 1
        return None

    def release(self, client: str) -> None:
        n = self._open.get(client, 0)
        if n <= 0:
            return
        self.count -= 1
        if n == 1:
            del self._open[client]  # bounded: only clients with open connections are kept
        else:
            self._open[client] = n - 1

    def open_for(self, client: str) -> int:
        return self._open.get(client, 0)


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
