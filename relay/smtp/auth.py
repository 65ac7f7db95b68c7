# SMTP AUTH credentials and the defences against guessing them: a constant-time
# check against [smtp.users], and a failure budget per client address over time
# (pure; the clock is a parameter). Delays and disconnects live in the session.
from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from typing import Mapping

from relay.limits import SharedCounters


class Authenticator:
    """AUTH PLAIN/LOGIN against [smtp.users] (constant-time), or any credentials."""

    def __init__(self, users: Mapping[str, str], accept_any: bool) -> None:
        self._users = {k.encode(): v.encode() for k, v in users.items()}
        self._accept_any = accept_any

    def verify(self, login: bytes, password: bytes) -> bool:
        expected = self._users.get(login)
        # Compare even for an unknown user, so the answer takes as long either way.
        ok = hmac.compare_digest(expected if expected is not None else b"\0" * len(password), password)
        return self._accept_any or (expected is not None and ok)

    def knows(self, login: bytes) -> bool:
        """Whether a login is a configured user: only those are named in the log."""
        return login in self._users


class FailureBudget:
    """At most `budget` AUTH failures per client address per `window` seconds.

    The window starts at a client's first failure; once the budget is spent, AUTH is
    refused (even with the right password) until the window has passed. At most
    `max_clients` addresses are remembered; the oldest are forgotten first.
    """

    def __init__(self, budget: int, window: float, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 10_000, shared: SharedCounters | None = None) -> None:
        self.budget = budget
        self.window = window
        self._clock = clock
        self._max_clients = max_clients
        self._failures: dict[str, tuple[float, int]] = {}  # client -> (window start, failures)
        # With several serving processes: their failures counted together (the clock
        # must then be one they share: time.monotonic is system-wide on Linux).
        self._shared = shared

    def _current(self, client: str, now: float) -> int:
        entry = self._failures.get(client)
        if entry is None:
            return 0
        if now - entry[0] >= self.window:
            del self._failures[client]
            return 0
        return entry[1]

    def exhausted(self, client: str) -> bool:
        now = self._clock()
        if self._shared is not None:
            count = self._shared.add_in_window(client, now, self.window, 0)
            if count is not None:
                return count >= self.budget
        return self._current(client, now) >= self.budget

    def record(self, client: str) -> bool:
        """Count one failure; whether the budget is now spent."""
        now = self._clock()
        if self._shared is not None:
            count = self._shared.add_in_window(client, now, self.window, 1)
            if count is not None:
                return count >= self.budget
        count = self._current(client, now) + 1
        if count == 1:
            if len(self._failures) >= self._max_clients:
                self._failures = {k: v for k, v in self._failures.items() if now - v[0] < self.window}
                while len(self._failures) >= self._max_clients:
                    del self._failures[next(iter(self._failures))]
            self._failures[client] = (now, 1)
        else:
            self._failures[client] = (self._failures[client][0], count)
        return count >= self.budget
