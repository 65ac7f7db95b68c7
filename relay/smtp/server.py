# The SMTP listener: builds the sessions' shared limits from the config (the
# connection cap from the open-files limit when not set), accepts connections,
# and shuts down gracefully (transactions in flight finish and are spooled).
from __future__ import annotations

import asyncio
import logging
import resource
import socket
import ssl
import time
import warnings
import weakref
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP

from relay.config import Config
from relay.limits import ConnectionLimits, LogThrottle, MemoryBudget, SharedLimits, connection_budget
from relay.smtp.auth import Authenticator, FailureBudget
from relay.smtp.session import RelaySMTP, Shared, admit, peer_ip

if TYPE_CHECKING:
    from relay.feedback.listener import FeedbackHandler
    from relay.smtp.handler import IntakeHandler

log = logging.getLogger("relay.smtp")


class _Gate(asyncio.Protocol):
    """Admits or refuses a connection before an SMTP session is built for it.

    A refusal costs a write and a close, not an aiosmtpd session (~0.2 ms of CPU each),
    so a flood of refused connections stays cheap. An admitted connection is handed
    to its session, which then sees every event of the transport.
    """

    def __init__(self, server: SmtpServer) -> None:
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ip = peer_ip(transport.get_extra_info("peername"))
        refusal = admit(self._server.shared, ip)
        if refusal is not None:
            # A greeting that refuses, then close (RFC 5321 §3.1: 554, or 421 for "try later").
            transport.write(refusal.encode() + b"\r\n")  # type: ignore[attr-defined]
            transport.close()
            return
        try:
            session = self._server.session(slot=ip)
        except BaseException:
            self._server.shared.connections.release(ip)
            transport.close()
            raise
        transport.set_protocol(session)
        session.connection_made(transport)


def _in_transaction(proto: SMTP) -> bool:
    """A live session between MAIL FROM and the end of DATA."""
    transport = getattr(proto, "transport", None)
    envelope = getattr(proto, "envelope", None)
    return (transport is not None and not transport.is_closing()
            and envelope is not None and envelope.mail_from is not None)


def connection_cap(config: Config) -> int:
    """smtp.max_connections, or (0) the SMTP share of the open-files limit as it is now."""
    if config.smtp.max_connections:
        return config.smtp.max_connections
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile == resource.RLIM_INFINITY:
        nofile = 1 << 20
    return connection_budget(nofile, upstream_connections=config.upstream.connections).smtp


class SmtpServer:
    """The listening socket and the sessions on it, for graceful shutdown."""

    def __init__(self, config: Config, handler: IntakeHandler | FeedbackHandler, *, name: str = "SMTP",
                 shared: SharedLimits | None = None) -> None:
        self._config = config
        self._name = name  # for the log: "SMTP", or "feedback" for the inbound listener
        self._shared_limits = shared  # with several processes: per-client counts they share
        self._handler = handler
        self._server: asyncio.base_events.Server | None = None
        self._protocols: weakref.WeakSet[SMTP] = weakref.WeakSet()  # closed sessions drop out
        smtp = config.smtp
        self._shared: Shared | None = None
        self._tls: ssl.SSLContext | None = None
        if smtp.tls_cert and smtp.tls_key:
            self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._tls.load_cert_chain(smtp.tls_cert, smtp.tls_key)

    @property
    def shared(self) -> Shared:
        assert self._shared is not None, "start() builds it"
        return self._shared

    def session(self, slot: str) -> RelaySMTP:
        """A session for an admitted connection; it gives the slot back when it ends."""
        smtp = self._config.smtp
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # aiosmtpd warns about AUTH without TLS; README covers it
            proto = RelaySMTP(self._handler, self.shared, slot=slot, data_size_limit=smtp.max_message_size,
                              enable_SMTPUTF8=True, decode_data=False, hostname=smtp.hostname,
                              ident="relay ESMTP", timeout=smtp.timeout,
                              tls_context=self._tls,  # auth_required is enforced in handle_MAIL
                              # With TLS configured, AUTH only after STARTTLS; without it, AUTH is
                              # offered in clear only when users are configured (keep such a relay
                              # on loopback or a private network).
                              auth_require_tls=self._tls is not None or not smtp.auth_enabled)
        self._protocols.add(proto)
        return proto

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen on smtp.listen, or on `sock` (one of several processes' sockets)."""
        smtp = self._config.smtp
        total = connection_cap(self._config)
        self._shared = Shared(
            config=smtp,
            connections=ConnectionLimits(total=total, per_client=smtp.max_connections_per_client,
                                         shared=self._shared_limits.smtp_clients if self._shared_limits else None),
            memory=MemoryBudget(smtp.max_concurrent_data_bytes),
            authenticator=Authenticator(smtp.users, smtp.accept_any_auth),
            auth_failures=FailureBudget(smtp.auth_failure_budget, smtp.auth_failure_window,
                                        shared=self._shared_limits.auth_failures if self._shared_limits else None),
            throttle=LogThrottle(),
        )
        log.info("%s: at most %d connections, %d per client; %d DATA bytes in memory at once",
                 self._name, total, smtp.max_connections_per_client, smtp.max_concurrent_data_bytes)
        where: dict[str, Any] = {"sock": sock} if sock is not None else {"host": smtp.listen.host,
                                                                          "port": smtp.listen.port}
        self._server = await asyncio.get_running_loop().create_server(lambda: _Gate(self), **where)

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting; let DATA in flight finish (and be spooled); close sessions."""
        if self._server is None:
            return
        self._server.close()
        self._handler.accepting = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (
                self._handler.in_flight or any(map(_in_transaction, list(self._protocols)))):
            await asyncio.sleep(0.02)
        for proto in list(self._protocols):
            transport = getattr(proto, "transport", None)
            if transport is not None and not transport.is_closing():
                transport.close()
        self._protocols.clear()
        await self._server.wait_closed()
        self._server = None
