# The tracking port faces the internet: connection caps (in total and per client
# address) and a request-head deadline, enforced in aiohttp's per-connection protocol
# so that a refused connection is closed before anything is read and a hit costs no
# extra task or timer when its head arrives in one piece.
from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from relay.config import in_networks
from relay.limits import ConnectionLimits, LogThrottle

log = logging.getLogger("relay.tracking")


class Guard:
    """What every connection of one listener shares: the counts, the deadline, the log throttle."""

    def __init__(self, *, limits: ConnectionLimits, header_timeout: float, trusted_proxies: tuple[Any, ...],
                 throttle: LogThrottle | None = None) -> None:
        self.limits = limits
        self.header_timeout = header_timeout
        self.trusted_proxies = trusted_proxies
        self.throttle = throttle or LogThrottle(interval=60.0)

    def admit(self, peer: Any) -> str | None:
        """The key the connection is counted under, or None when it is refused (and logged)."""
        host, port = (str(peer[0]), peer[1]) if isinstance(peer, tuple) and peer else ("", 0)
        key = host
        if self.trusted_proxies and in_networks(host, self.trusted_proxies):
            # A proxy carries many clients: one key per connection, so only the total cap applies.
            key = f"{host} {port}"
        why = self.limits.acquire(key)
        if why is None:
            return key
        # One line per client (per_client) or per flood (total) and interval, never per connection.
        throttle_key = "total" if why == "total" else f"per_client {host}"
        if self.throttle.should_log(throttle_key):
            if why == "total":
                log.warning("tracking: refusing connections: %d open, max_connections reached (%d more "
                            "refused since the last line)", self.limits.count, self.throttle.suppressed(throttle_key))
            else:
                log.warning("tracking: refusing connections from %s: %d open, max_connections_per_client "
                            "reached (%d more refused since the last line)", host, self.limits.open_for(key),
                            self.throttle.suppressed(throttle_key))
        return None


class GuardedHandler(RequestHandler):
    """aiohttp's HTTP/1.1 protocol, plus the connection caps and the request-head deadline."""

    __slots__ = ("_guard", "_client", "_head_timer")

    def __init__(self, manager: Server, *, guard: Guard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._client: str | None = None
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        client = self._guard.admit(transport.get_extra_info("peername"))
        if client is None:
            cast(asyncio.Transport, transport).abort()  # at once, before reading a byte
            return
        self._client = client
        super().connection_made(transport)
        self._head_timer = self._loop.call_later(self._guard.header_timeout, self._head_too_slow)

    def data_received(self, data: bytes) -> None:
        if self._client is None:
            return
        heads = self._request_count  # aiohttp counts each request whose head it parsed
        super().data_received(data)
        if self._request_count != heads:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
        elif self._head_timer is None and data:
            # The first bytes of a further request on a kept-alive connection: its head
            # must be complete in time too, however slowly it trickles in.
            self._head_timer = self._loop.call_later(self._guard.header_timeout, self._head_too_slow)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._client is None:
            return  # refused: nothing was set up
        self._guard.limits.release(self._client)
        self._client = None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _head_too_slow(self) -> None:
        # Slowloris: a client that keeps a connection by trickling a request head
        # (nginx client_header_timeout, Apache mod_reqtimeout).
        self._head_timer = None
        self.force_close()
