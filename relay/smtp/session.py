# One SMTP session: aiosmtpd's protocol with relay's limits on it. Admission at
# connect (allowed_clients, connection caps) is decided before a session exists;
# the session makes the timeout an idle timeout per read, reads DATA with lines
# ending at LF into one buffer held against a shared memory budget, and slows down
# and cuts off AUTH guessing.
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, Session, syntax

from relay.config import SmtpConfig, in_networks
from relay.limits import ConnectionLimits, LogThrottle, MemoryBudget
from relay.smtp import address as addresses
from relay.smtp import replies
from relay.smtp.auth import Authenticator, FailureBudget
from relay.smtp.data import END, DataDecoder

log = logging.getLogger("relay.smtp")

GROW_STEP = 16 * 1024  # DATA memory is reserved in slices of this size as it arrives


@dataclass(frozen=True, kw_only=True)
class Shared:
    """What the sessions of one listener share: the limits and their bookkeeping."""

    config: SmtpConfig
    connections: ConnectionLimits
    memory: MemoryBudget
    authenticator: Authenticator
    auth_failures: FailureBudget
    throttle: LogThrottle  # one log line per client and kind per interval


def peer_ip(peer: Any) -> str:
    return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"


def log_throttled(throttle: LogThrottle, key: str, level: int, msg: str, *args: Any,
                  extra: dict[str, Any] | None = None) -> None:
    """Log msg at most once per interval per key, saying how many were swallowed."""
    swallowed = throttle.suppressed(key)
    if throttle.should_log(key):
        log.log(level, msg + (f" (and {swallowed} more since the last such line)" if swallowed else ""), *args,
                extra=extra)


def admit(shared: Shared, ip: str) -> str | None:
    """Take a connection slot for a client: None, or the greeting that refuses it."""
    if not in_networks(ip, shared.config.allowed_clients):
        log_throttled(shared.throttle, f"refused:{ip}", logging.INFO,
                      "refused a connection from %s: not in smtp.allowed_clients", ip)
        return replies.REFUSED_CLIENT.format(ip=ip)
    why = shared.connections.acquire(ip)
    if why is None:
        return None
    log_throttled(shared.throttle, f"busy:{why}:{ip}", logging.WARNING, "refused a connection from %s: %s", ip,
                  f"{shared.connections.per_client} connections from it already (smtp.max_connections_per_client)"
                  if why == "per_client" else f"{shared.connections.total} connections already (smtp.max_connections)")
    return replies.TOO_MANY_FROM_CLIENT.format(ip=ip) if why == "per_client" else replies.SERVER_BUSY


async def next_piece(reader: asyncio.StreamReader) -> bytes:
    """The stream up to its next ".\\r\\n", or a buffer's worth when it holds none."""
    try:
        return await reader.readuntil(END)
    except asyncio.LimitOverrunError as e:
        # No ".\r\n" in the buffer (or only beyond the stream's limit): take what cannot
        # be part of one; readuntil keeps the octets that could.
        return await reader.readexactly(e.consumed)
    except asyncio.IncompleteReadError as e:
        raise ConnectionResetError("connection closed during DATA") from e


class RelaySMTP(SMTP):
    def __init__(self, handler: Any, shared: Shared, *, slot: str | None = None, **kwargs: Any) -> None:
        self._shared = shared
        self._slot = slot  # the client address whose connection slot this session holds
        self._reserved = 0  # DATA bytes reserved in shared.memory for this transaction
        self._last_read = 0.0
        self._processing = False  # the DATA hook is running: the client is waiting for us
        self._auth_failures = 0
        self._auth_failed: bytes | None = None  # the login of a failed check, set by _check
        self._last_reply: Any = ""  # what push() sent last
        super().__init__(handler, authenticator=self._check, **kwargs)

    def connection_lost(self, error: Exception | None) -> None:
        self._release_data()
        if self._slot is not None:
            self._shared.connections.release(self._slot)
            self._slot = None
        super().connection_lost(error)

    # --- idle timeout per read (RFC 5321 §4.5.3.2; Postfix smtpd_timeout) -------------

    def _reset_timeout(self, duration: float | None = None) -> None:
        self._last_read = self.loop.time()
        super()._reset_timeout(duration)

    def data_received(self, data: bytes) -> None:
        # Idle means no octets arriving: DATA is read a piece at a time, so a slow but
        # steady upload is alive while the piece it is sending is still incomplete.
        self._last_read = self.loop.time()
        super().data_received(data)

    def _timeout_cb(self) -> None:
        idle = self.loop.time() - self._last_read
        if self._processing or idle < self._timeout_duration:
            # Data arrived since the timer was set, or we are the slow side: wait on.
            wait = self._timeout_duration - (0.0 if self._processing else idle)
            self._timeout_handle = self.loop.call_later(wait, self._timeout_cb)
            return
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(replies.TIMEOUT.format(host=self.hostname).encode() + b"\r\n")  # type: ignore[attr-defined]
        super()._timeout_cb()

    # --- the one log line of a transaction that aiosmtpd refuses itself ----------------

    async def push(self, status: Any) -> None:
        self._last_reply = status
        await super().push(status)

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        self._last_reply = ""
        await super().smtp_MAIL(arg)
        # A SIZE= over max_message_size (RFC 1870) is refused before the handler sees MAIL.
        if isinstance(self._last_reply, str) and self._last_reply.startswith("552"):
            ip = peer_ip(self.session.peer if self.session is not None else None)
            log_throttled(self._shared.throttle, f"mail:{ip}:552", logging.INFO, "refused MAIL from %s: %s", ip,
                          self._last_reply, extra={"outcome": "refused", "peer": ip, "reply": self._last_reply})

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        found = addresses.simple_path(arg)
        if found is None or (self.local_part_limit and len(found[0].rpartition("@")[0]) > self.local_part_limit):
            return super()._getaddr(arg)  # anything unusual: email's parser, as before
        return found

    # --- the transaction's DATA memory -----------------------------------------------

    def reserve_data(self, size: int) -> bool:
        """Reserve memory for a new transaction's DATA (called by the handler at MAIL)."""
        self._release_data()
        if not self._shared.memory.reserve(size):
            return False
        self._reserved = size
        return True

    def _grow(self, needed: int) -> bool:
        if needed <= self._reserved:
            return True
        # A whole slice if it fits, else just what is needed (the budget's last bytes).
        for more in (max(needed - self._reserved, GROW_STEP), needed - self._reserved):
            if self._shared.memory.reserve(more):
                self._reserved += more
                return True
        return False

    def _release_data(self) -> None:
        if self._reserved:
            self._shared.memory.release(self._reserved)
            self._reserved = 0

    def _set_post_data_state(self) -> None:
        # DATA done (either way), RSET, HELO/EHLO and STARTTLS all come through here.
        self._release_data()
        super()._set_post_data_state()

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push(replies.DATA_GO_AHEAD)
        content, refusal = await self._read_data()
        if refusal is not None:
            # The transaction's one log line (the handler logs the others): the client
            # sent the whole message for it, so it is not throttled.
            ip = peer_ip(self.session.peer if self.session is not None else None)
            sender = "" if self.envelope.mail_from in ("<>", None) else str(self.envelope.mail_from)
            n = len(self.envelope.rcpt_tos)
            log.info("refused a message from %s: <%s> -> %d recipient(s): %s", ip, sender, n, refusal,
                     extra={"outcome": "refused", "peer": ip, "sender": sender, "recipients": n, "reply": refusal})
            # Replied only after the end of data (RFC 5321 §4.2.5), as aiosmtpd does.
            self._set_post_data_state()
            await self.push(refusal)
            return
        self.envelope.content = self.envelope.original_content = content  # type: ignore[assignment]
        del content  # the handler may drop the envelope's reference early (memory)
        self._processing = True
        try:
            status = await self._call_handler_hook("DATA")
        finally:
            self._processing = False
            self._last_read = self.loop.time()
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    async def _read_data(self) -> tuple[bytearray, str | None]:
        """The message, dot-unstuffed, in one buffer; or a refusal once the data has ended.

        Read up to each ".\\r\\n" (or a buffer's worth when there is none), not line by
        line: DataDecoder applies RFC 5321's rules to each piece (see relay/smtp/data.py).
        """
        reader = self._reader
        decoder = DataDecoder(line_limit=self.line_length_limit, size_limit=self.data_size_limit)
        while True:
            done = decoder.feed(await next_piece(reader))
            # The piece is in memory already (the stream's buffer): reserve for it now.
            if decoder.refusal is None and not self._grow(decoder.total):
                decoder.refuse(replies.NO_STORAGE)
            if decoder.refusal is not None and self._reserved:
                self._release_data()  # read on to the end, holding nothing
            if done:
                break
        if decoder.refusal == replies.NO_STORAGE:
            log_throttled(self._shared.throttle, "no-storage", logging.WARNING,
                          "refused DATA: smtp.max_concurrent_data_bytes (%d) is in use", self._shared.memory.total)
        return decoder.content, decoder.refusal

    # --- AUTH: no oracle, no guessing at speed (RFC 4954; Postfix smtpd_error_sleep_time) ---

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        assert self.session is not None and self.envelope is not None
        shared = self._shared
        ip = peer_ip(self.session.peer)
        if not in_networks(ip, shared.config.allowed_clients):  # refused at connect; kept as a second lock
            await self.push(replies.NOT_ALLOWED.format(ip=ip))
            return
        if self.envelope.mail_from is not None:
            await self.push(replies.AUTH_IN_TRANSACTION)
            return
        if shared.auth_failures.exhausted(ip):
            await self._goodbye(replies.AUTH_TOO_MANY)
            return
        self._auth_failed = None
        await super().smtp_AUTH(arg)
        login, self._auth_failed = self._auth_failed, None
        if login is None:
            return
        self._auth_failures += 1
        spent = shared.auth_failures.record(ip)
        who = repr(login.decode("utf-8", "replace")) if shared.authenticator.knows(login) else "an unknown user"
        log_throttled(shared.throttle, f"auth:{ip}", logging.WARNING, "AUTH failed from %s for %s", ip, who)
        await asyncio.sleep(shared.config.auth_failure_delay)
        if spent or self._auth_failures >= shared.config.auth_max_failures_per_connection:
            await self._goodbye(replies.AUTH_TOO_MANY)
        else:
            await self.push(replies.AUTH_INVALID)

    def _check(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
               auth_data: Any) -> AuthResult:
        login, password = getattr(auth_data, "login", None), getattr(auth_data, "password", None)
        if not isinstance(login, bytes) or not isinstance(password, bytes):
            return AuthResult(success=False, handled=False)
        if self._shared.authenticator.verify(login, password):
            return AuthResult(success=True, handled=False, auth_data=auth_data)
        self._auth_failed = login
        return AuthResult(success=False, handled=True)  # smtp_AUTH answers, after the delay

    async def _goodbye(self, reply: str) -> None:
        await self.push(reply)
        if self.transport is not None:
            self.transport.close()
