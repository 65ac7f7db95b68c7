# SMTP intake: the aiosmtpd handler. The server owns the protocol; this handler
# owns the policy (who may send, how many recipients) and turns the intake
# decision into a durable spool entry before it answers "250 Ok <message-id>".
from __future__ import annotations

import asyncio
import hmac
import logging
import ssl
import time
import warnings
import weakref
from datetime import datetime, timezone
from typing import Any, Mapping

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from relay import intake
from relay.config import Config, in_networks
from relay.delivery import Schedule
from relay.errors import Rejected
from relay.events import records
from relay.events.bus import EventBus
from relay.spool import Job, Spool

log = logging.getLogger("relay.smtp")

# Replies, named once (RFC 5321 §4.2 codes, RFC 3463 enhanced status codes).
NOT_ALLOWED = "550 5.7.1 Relaying denied: client {ip} is not in smtp.allowed_clients"
TOO_MANY_RCPTS = "452 4.5.3 Too many recipients (at most {n} per message)"
TEMP_FAILURE = "451 4.3.0 Temporary service failure"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
AUTH_REQUIRED = "530 5.7.0 Authentication required"


class IntakeHandler:
    def __init__(self, *, config: Config, spool: Spool, schedule: Schedule, bus: EventBus) -> None:
        self._config = config
        self._spool = spool
        self._schedule = schedule
        self._bus = bus
        self.in_flight = 0
        self.accepting = True

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        # aiosmtpd reads commands in order from the stream, so pipelined clients
        # work; advertise it (RFC 2920).
        return responses[:-1] + ["250-PIPELINING"] + responses[-1:]

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        if not self.accepting:
            return SHUTTING_DOWN
        peer = _peer_ip(session)
        if not in_networks(peer, self._config.smtp.allowed_clients):
            return NOT_ALLOWED.format(ip=peer)
        if self._config.smtp.auth_required and not session.authenticated:
            return AUTH_REQUIRED
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self._config.smtp.max_recipients:
            return TOO_MANY_RCPTS.format(n=self._config.smtp.max_recipients)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # A transaction begun before shutdown is finished, not refused.
        self.in_flight += 1
        try:
            return await self._accept(session, envelope)
        finally:
            self.in_flight -= 1

    async def _accept(self, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        assert isinstance(raw, bytes)
        now = time.time()
        now_dt = datetime.fromtimestamp(now, timezone.utc)
        peer = _peer_ip(session)
        rcpts = list(envelope.rcpt_tos)
        # aiosmtpd keeps the null reverse-path as "<>"; relay uses "" (RFC 5321 §4.5.5)
        sender = "" if envelope.mail_from in ("<>", None) else str(envelope.mail_from)
        try:
            accepted = intake.accept(raw, config=self._config, helo=session.host_name, peer_ip=peer,
                                     recipients=rcpts, now=now_dt, message_id=intake.new_message_id(now))
        except Rejected as e:
            log.info("refused message from %s: %s", peer, e.reply)
            return e.reply
        cset = accepted.configuration_set
        mail = records.mail_info(
            message_id=accepted.message_id, timestamp=now_dt, source=sender,
            destination=rcpts, header_block=accepted.header_block,
            configuration_set=cset.name if cset else None, message_tags=accepted.tags,
            source_ip=peer, caller_identity=_auth_user(session),
        )
        job = Job(message_id=accepted.message_id, accepted_at=now,
                  configuration_set=cset.name if cset else None, mail_from=sender,
                  mail=mail, tracked=bool(cset and (cset.tracks_opens or cset.tracks_clicks)),
                  attempts={r: 0 for r in dict.fromkeys(rcpts)}, due=now, data=accepted.data)
        try:
            # The Send event is committed with the message: a crash cannot lose one.
            await self._spool.put(job, self._bus.statements(job.configuration_set, records.send_event(mail)))
        except Exception:  # noqa: BLE001 - nothing is accepted that is not stored
            log.exception("could not spool a message from %s", peer)
            return TEMP_FAILURE
        self._bus.committed()
        self._schedule.add(job)
        log.info("accepted %s from %s: <%s> -> %d recipient(s), configuration set %s",
                 job.message_id, peer, job.mail_from, len(rcpts), job.configuration_set or "-")
        return f"250 Ok {job.message_id}"


def _peer_ip(session: Session) -> str:
    peer: Any = session.peer
    return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"


def _auth_user(session: Session) -> str | None:
    login = getattr(session.auth_data, "login", None)  # login_data is deprecated in aiosmtpd
    return login.decode("utf-8", "replace") if isinstance(login, bytes) else login


class Authenticator:
    """SMTP AUTH PLAIN/LOGIN against [smtp.users] (constant-time), or any credentials."""

    def __init__(self, users: Mapping[str, str], accept_any: bool) -> None:
        self._users = {k.encode(): v.encode() for k, v in users.items()}
        self._accept_any = accept_any

    def __call__(self, server: SMTP, session: Session, envelope: Envelope,
                 mechanism: str, auth_data: Any) -> AuthResult:
        login, password = getattr(auth_data, "login", None), getattr(auth_data, "password", None)
        if not isinstance(login, bytes) or not isinstance(password, bytes):
            return AuthResult(success=False, handled=False)
        expected = self._users.get(login)
        ok = self._accept_any or (expected is not None and hmac.compare_digest(expected, password))
        if not ok:
            log.info("AUTH failed for user %r from %s", login.decode("utf-8", "replace"), _peer_ip(session))
        return AuthResult(success=ok, handled=False, auth_data=auth_data)


def _in_transaction(proto: SMTP) -> bool:
    """A live session between MAIL FROM and the end of DATA."""
    transport = getattr(proto, "transport", None)
    envelope = getattr(proto, "envelope", None)
    return (transport is not None and not transport.is_closing()
            and envelope is not None and envelope.mail_from is not None)


class SmtpServer:
    """The listening socket and the sessions on it, for graceful shutdown."""

    def __init__(self, config: Config, handler: IntakeHandler) -> None:
        self._config = config
        self._handler = handler
        self._server: asyncio.base_events.Server | None = None
        self._protocols: weakref.WeakSet[SMTP] = weakref.WeakSet()  # closed sessions drop out
        smtp = config.smtp
        self._authenticator = Authenticator(smtp.users, smtp.accept_any_auth)
        self._tls: ssl.SSLContext | None = None
        if smtp.tls_cert and smtp.tls_key:
            self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._tls.load_cert_chain(smtp.tls_cert, smtp.tls_key)

    def _factory(self) -> SMTP:
        smtp = self._config.smtp
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # aiosmtpd warns about AUTH without TLS; README covers it
            proto = SMTP(self._handler, data_size_limit=smtp.max_message_size, enable_SMTPUTF8=True,
                         decode_data=False, hostname=smtp.hostname, ident="relay ESMTP",
                         tls_context=self._tls,  # auth_required is enforced in handle_MAIL
                         # With TLS configured, AUTH only after STARTTLS; without it, AUTH is
                         # offered in clear only when users are configured (keep such a relay
                         # on loopback or a private network).
                         auth_require_tls=self._tls is not None or not smtp.auth_enabled,
                         authenticator=self._authenticator)
        self._protocols.add(proto)
        return proto

    async def start(self) -> None:
        listen = self._config.smtp.listen
        self._server = await asyncio.get_running_loop().create_server(
            self._factory, host=listen.host, port=listen.port)

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
