# Where mail goes: an SMTP upstream through a pool of reused aiosmtplib
# connections, or a local Maildir for development. A connection idle for a while, or
# whose last transaction did not end cleanly, gets an RSET before reuse (RFC 5321
# §4.1.1.5: it checks the connection too); one back from a transaction a moment ago
# goes straight to MAIL, and if it turns out to be gone there, nothing was accepted,
# so the transaction is tried once more on a new connection.
# Every outcome is reported per recipient as a Reply; nothing here raises.
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import ssl
import time
import uuid
from typing import Iterator, Protocol, Sequence

import aiosmtplib

from relay.config import UpstreamConfig
from relay.downgrade import DowngradeError, needs_8bitmime, needs_smtputf8, to_7bit
from relay.outcomes import INTERNAL_ERROR, Reply

log = logging.getLogger("relay.upstream")

# A connection idle at most this long is reused without an RSET round trip first.
PROBE_AFTER = 1.0

# DATA goes out in slices of about this size, each one waiting for the socket to take the
# last: a 25 MB message then costs no whole-message copies on its way out.
DATA_CHUNK = 256 * 1024
_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")  # every line ending, bare CR and LF too


def _wire(piece: bytes) -> bytes:
    """One slice (starting at a line start) with CRLF line endings and leading dots doubled."""
    if not piece.count(b"\r") == piece.count(b"\n") == piece.count(b"\r\n"):
        piece = _LINE_ENDINGS.sub(b"\r\n", piece)  # some bare CR or LF (counting is ~5x cheaper)
    # Leading dots doubled (RFC 5321 §4.5.2): a slice starts at a line start, and every
    # other line start follows an LF once line endings are CRLF.
    piece = piece.replace(b"\n.", b"\n..")
    return b"." + piece if piece[:1] == b"." else piece


def data_chunks(data: bytes, size: int = DATA_CHUNK) -> Iterator[bytes]:
    """DATA's wire form of `data` in slices: what aiosmtplib's data() sends in one piece
    (bare CR and LF made CRLF, a CRLF added at the end if missing, leading dots doubled,
    then ".\\r\\n"), byte for byte. Slices end just after an LF, so no CRLF and no line
    start is split between two of them."""
    pos, n = 0, len(data)
    last = b""
    while pos < n:
        end = data.find(b"\n", pos + size)
        end = n if end == -1 else end + 1
        last = _wire(data[pos:end])
        pos = end
        if pos < n:
            yield last
    if not last.endswith(b"\r\n"):
        last += b"\r\n"
    yield last + b".\r\n"


class Upstream(Protocol):
    async def send(self, mail_from: str, recipients: Sequence[str], data: bytes) -> dict[str, Reply]: ...
    async def close(self) -> None: ...


def _is_ascii(s: str) -> bool:
    return all(ord(c) < 128 for c in s)


class SmtpUpstream:
    """A bounded pool of connections to one SMTP server."""

    def __init__(self, config: UpstreamConfig, *, local_hostname: str) -> None:
        self._config = config
        self._local_hostname = local_hostname
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []  # with the loop time it went idle
        self._unclean: set[aiosmtplib.SMTP] = set()  # DATA was refused: the server may hold a transaction
        self._slots = asyncio.Semaphore(config.connections)
        self._remote = f"{config.host}"
        self._tls: ssl.SSLContext | None = None
        if config.scheme in ("smtps", "smtp+starttls"):
            self._tls = ssl.create_default_context(cafile=config.tls_ca_file)
            if not config.tls_verify:
                self._tls.check_hostname = False
                self._tls.verify_mode = ssl.CERT_NONE

    async def send(self, mail_from: str, recipients: Sequence[str], data: bytes) -> dict[str, Reply]:
        async with self._slots:
            client: aiosmtplib.SMTP | None = None
            try:
                client, checked = await self._acquire()
                try:
                    replies = await (self._checked if checked else self._transaction)(
                        client, mail_from, recipients, data)
                except _Stale:  # reused without RSET and gone at MAIL: nothing accepted, so once more
                    self._discard(client)
                    client = None
                    client = await self._connect()
                    replies = await self._checked(client, mail_from, recipients, data)
            except _StepFailed as e:
                self._discard(client)
                return {r: e.reply for r in recipients}
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError, ssl.SSLError) as e:
                self._discard(client)
                reply = Reply(0, f"upstream {self._config.safe_url}: {type(e).__name__}: {e}", self._remote)
                return {r: reply for r in recipients}
            except asyncio.CancelledError:
                self._discard(client)  # mid-transaction: the connection's state is unknown
                raise
            except Exception as e:  # noqa: BLE001 - e.g. aiosmtplib's ValueError for a control character
                # Whatever went wrong, this attempt is over for these recipients: they are
                # deferred (then bounced when max_delivery_seconds is up), and a connection
                # left in an unknown state is closed, never reused or leaked.
                self._discard(client)
                log.warning("upstream %s: unexpected %s while sending; deferring %d recipient(s)",
                            self._config.safe_url, type(e).__name__, len(recipients))
                reply = Reply(0, f"upstream {self._config.safe_url}: {INTERNAL_ERROR}: {type(e).__name__}: {e}",
                              self._remote)
                return {r: reply for r in recipients}
            self._idle.append((client, asyncio.get_running_loop().time()))
            return replies

    async def close(self) -> None:
        while self._idle:
            client, _ = self._idle.pop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.quit(), 5)
            client.close()

    def _discard(self, client: aiosmtplib.SMTP | None) -> None:
        if client is not None:
            self._unclean.discard(client)
            with contextlib.suppress(Exception):
                client.close()

    async def _acquire(self) -> tuple[aiosmtplib.SMTP, bool]:
        """A connection, and whether it is known to work (new, or just answered RSET)."""
        now = asyncio.get_running_loop().time()
        while self._idle:
            client, since = self._idle.pop()
            if not client.is_connected:
                self._discard(client)
                continue
            if client not in self._unclean and now - since <= PROBE_AFTER:
                return client, False
            try:
                await client.rset()  # RFC 5321 §4.1.1.5: a clean transaction on a reused connection
                self._unclean.discard(client)
                return client, True
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
                self._discard(client)
        return await self._connect(), True

    async def _connect(self) -> aiosmtplib.SMTP:
        c = self._config
        client = aiosmtplib.SMTP(
            hostname=c.host, port=c.port, timeout=c.timeout, local_hostname=self._local_hostname,
            use_tls=c.scheme == "smtps", start_tls=c.scheme == "smtp+starttls",
            tls_context=self._tls,
        )
        step = "connect"
        try:
            await client.connect()
            if client.last_ehlo_response is None:
                # Learn the extensions (8BITMIME, SMTPUTF8) before the first transaction.
                step = "EHLO"
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await client.helo()  # RFC 5321 §4.1.4: an old server; no extensions
            if c.username and c.password:
                step = "AUTH"
                await client.login(c.username, c.password)
        except BaseException as e:
            self._discard(client)  # half-open (say, EHLO timed out): close it, never leak it
            if not isinstance(e, aiosmtplib.SMTPResponseException):
                raise
            # A refused greeting or AUTH is the relay's problem (credentials, limits), not
            # the recipients': report it as "no reply" so messages wait instead of bouncing.
            raise _StepFailed(Reply(0, f"upstream {step} failed: {e.code} {e.message}", self._remote)) from None
        return client

    async def _checked(self, client: aiosmtplib.SMTP, mail_from: str,
                       recipients: Sequence[str], data: bytes) -> dict[str, Reply]:
        """_transaction on a connection known to work: a failure at MAIL is the reply."""
        try:
            return await self._transaction(client, mail_from, recipients, data)
        except _Stale as stale:
            raise stale.cause from None

    async def _transaction(self, client: aiosmtplib.SMTP, mail_from: str,
                           recipients: Sequence[str], data: bytes) -> dict[str, Reply]:
        options: list[str] = []
        if needs_8bitmime(data):
            if client.supports_extension("8bitmime"):
                options.append("BODY=8BITMIME")
            else:
                try:
                    data = to_7bit(data)  # RFC 6152 §3: convert rather than send 8-bit blind
                except DowngradeError as e:
                    raise _StepFailed(Reply(554, f"5.6.3 Upstream lacks 8BITMIME and the message "
                                                 f"cannot be converted: {e}", self._remote)) from None
        utf8 = needs_smtputf8(data) or not _is_ascii(mail_from) or not all(map(_is_ascii, recipients))
        if utf8:
            if not client.supports_extension("smtputf8"):
                raise _StepFailed(Reply(554, "5.6.7 Upstream lacks SMTPUTF8, which this message "
                                             "needs (RFC 6531)", self._remote))
            options.append("SMTPUTF8")
        enc = "utf-8" if utf8 else "ascii"
        try:
            await client.mail(mail_from, options=options, encoding=enc)
        except aiosmtplib.SMTPServerDisconnected as e:
            raise _Stale(e) from None  # gone before anything was accepted
        except aiosmtplib.SMTPResponseException as e:
            failed = _StepFailed(Reply(e.code, f"MAIL FROM: {e.message}", self._remote))
            if e.code == 421:  # RFC 5321 §3.8: the server is closing this connection
                raise _Stale(failed) from None
            raise failed from None
        replies: dict[str, Reply] = {}
        accepted: list[str] = []
        for rcpt in recipients:
            try:
                r = await client.rcpt(rcpt, encoding=enc)
                accepted.append(rcpt)
                replies[rcpt] = Reply(r.code, r.message, self._remote)
            except aiosmtplib.SMTPResponseException as e:
                replies[rcpt] = Reply(e.code, e.message, self._remote)
        if not accepted:
            await client.rset()
            return replies
        try:
            # RFC 5321 §4.5.3.2.6: wait 10 minutes for the reply to the final ".", longer than
            # for other commands: giving up early makes a slow server's accepted copy a retry,
            # and the recipient gets it twice.
            r = await _data(client, data, write_timeout=self._config.timeout, timeout=self._config.data_timeout)
            done = Reply(r.code, r.message, self._remote)
        except aiosmtplib.SMTPResponseException as e:
            done = Reply(e.code, e.message, self._remote)
            self._unclean.add(client)  # refused at DATA or after it: RSET before the next MAIL
        for rcpt in accepted:  # SMTP gives one DATA reply for all accepted recipients
            replies[rcpt] = done
        return replies


async def _data(client: aiosmtplib.SMTP, data: bytes, *, write_timeout: float,
                timeout: float) -> aiosmtplib.SMTPResponse:
    """aiosmtplib's data(), but written in slices with flow control: its own builds the
    whole wire form (three copies of the message) and hands it to the transport at once."""
    r = await client.execute_command(b"DATA", timeout=timeout)
    if r.code != 354:
        raise aiosmtplib.SMTPDataError(r.code, r.message)
    protocol = client.protocol
    assert protocol is not None
    chunks = data_chunks(data)
    chunk = next(chunks)
    for following in chunks:
        protocol.write(chunk)
        # Wait until the socket has taken it (asyncio's write-buffer limit), so only a
        # slice or two is ever held; a peer that stops reading is a timeout.
        await asyncio.wait_for(protocol._drain_helper(), write_timeout)
        chunk = following
    # The last slice ends the data: the reply is awaited at once, with no await between
    # (aiosmtplib drops a reply that arrives while none is awaited).
    protocol.write(chunk)
    r = await protocol.read_response(timeout=timeout)
    if r.code != 250:
        raise aiosmtplib.SMTPDataError(r.code, r.message)
    return r


class _StepFailed(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class _Stale(Exception):
    """MAIL found the connection gone or closing: nothing was accepted on it."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


class MaildirUpstream:
    """The local-dev sink: each delivered copy is one file in a standard Maildir."""

    def __init__(self, path: str) -> None:
        self.path = path

    async def send(self, mail_from: str, recipients: Sequence[str], data: bytes) -> dict[str, Reply]:
        try:
            key = await asyncio.to_thread(self._write, mail_from, recipients, data)
        except OSError as e:
            reply = Reply(0, f"maildir {self.path}: {e.strerror or e}", "localhost")
            return {r: reply for r in recipients}
        return {r: Reply(250, f"2.0.0 Ok: stored as {key}", "localhost") for r in recipients}

    def _write(self, mail_from: str, recipients: Sequence[str], data: bytes) -> str:
        # What a local delivery agent adds: Return-Path (RFC 5321 §4.4) and the envelope recipients.
        nl = b"\r\n" if b"\r\n" in data[:2000] else b"\n"
        envelope = (f"Return-Path: <{mail_from}>".encode() + nl
                    + f"X-Envelope-To: {', '.join(recipients)}".encode() + nl)
        # The Maildir protocol by hand (mailbox.Maildir leaves its tmp/ file behind when
        # the final flush fails, e.g. on a full disk): write tmp/, fsync, rename into new/;
        # on any failure the tmp/ file is removed, so a retry leaves no debris.
        root = os.path.abspath(self.path)
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        key = f"{time.time():.6f}.{uuid.uuid4().hex}.{socket.gethostname().replace('/', '_')}"
        tmp = os.path.join(root, "tmp", key)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                view = memoryview(envelope + data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, os.path.join(root, "new", key))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return key

    async def close(self) -> None:
        return None


def make_upstream(config: UpstreamConfig, *, local_hostname: str) -> Upstream:
    if config.scheme == "maildir":
        assert config.maildir is not None
        return MaildirUpstream(config.maildir)
    return SmtpUpstream(config, local_hostname=local_hostname)
