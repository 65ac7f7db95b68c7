# SMTP intake: the aiosmtpd handler. The server owns the protocol; this handler
# owns the policy (who may send, how many recipients) and turns the intake
# decision into a durable spool entry before it answers "250 Ok <message-id>".
# (The session in session.py adds the limits: connections, timeouts, AUTH, memory.)
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from relay import intake
from relay.config import Config, in_networks
from relay.delivery import Schedule
from relay.errors import Rejected
from relay.events import records
from relay.events.bus import EventBus
from relay.limits import LogThrottle
from relay.metrics import Metrics
from relay.smtp import address as addresses
from relay.smtp.replies import (
    AUTH_REQUIRED,
    BAD_RECIPIENT,
    BAD_SENDER,
    NO_STORAGE,
    NOT_ALLOWED,
    SHUTTING_DOWN,
    TEMP_FAILURE,
    TOO_MANY_RCPTS,
)
from relay.smtp.session import GROW_STEP, RelaySMTP, log_throttled, peer_ip
from relay.spool import Job, Spool

log = logging.getLogger("relay.smtp")


class IntakeHandler:
    def __init__(self, *, config: Config, spool: Spool, schedule: Schedule, bus: EventBus,
                 metrics: Metrics | None = None) -> None:
        self._config = config
        self._metrics = metrics or Metrics()
        self._spool = spool
        self._schedule = schedule
        self._bus = bus
        self.in_flight = 0
        self.accepting = True
        self._throttle = LogThrottle()  # refused addresses: one line per client per minute

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        # aiosmtpd reads commands in order from the stream, so pipelined clients
        # work; advertise it (RFC 2920).
        return responses[:-1] + ["250-PIPELINING"] + responses[-1:]

    def _bad_address(self, peer: str, addr: str, *, recipient: bool) -> bool:
        why = addresses.problem(addr, recipient=recipient)
        if why is not None:
            reply = BAD_RECIPIENT if recipient else BAD_SENDER
            log_throttled(self._throttle, f"address:{peer}", logging.INFO, "refused %s %r from %s: %s",
                          "recipient" if recipient else "sender", addr, peer, why,
                          extra={"outcome": "refused_recipient" if recipient else "refused", "peer": peer,
                                 "reply": reply})
        return why is not None

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        peer = _peer_ip(session)
        if not self.accepting:
            return self._refused(peer, address, SHUTTING_DOWN)
        if not in_networks(peer, self._config.smtp.allowed_clients):
            return self._refused(peer, address, NOT_ALLOWED.format(ip=peer))
        if self._config.smtp.auth_required and not session.authenticated:
            return self._refused(peer, address, AUTH_REQUIRED)
        if self._bad_address(peer, address, recipient=False):
            return BAD_SENDER
        # Hold the message's memory from now on: its declared SIZE (RFC 1870), else a first
        # slice that grows as DATA arrives. What does not fit waits (451) instead of
        # swelling the process (smtp.max_concurrent_data_bytes).
        if isinstance(server, RelaySMTP) and not server.reserve_data(declared_size(mail_options)):
            return self._refused(peer, address, NO_STORAGE)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    def _refused(self, peer: str, sender: str, reply: str) -> str:
        """The log line of a transaction refused at MAIL. Refusing costs a client nothing, so
        it is one line per client and reply per minute (saying how many were not logged)."""
        # %r: the address may not have passed the syntax check (control characters).
        log_throttled(self._throttle, f"mail:{peer}:{reply[:3]}", logging.INFO, "refused MAIL from %s (sender %r): %s",
                      peer, sender, reply, extra={"outcome": "refused", "peer": peer, "sender": sender,
                                                  "reply": reply})
        return reply

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if self._bad_address(_peer_ip(session), address, recipient=True):
            return BAD_RECIPIENT
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
        assert isinstance(raw, (bytes, bytearray))
        # The envelope's references go now, so the received bytes are freed as soon as
        # intake has built what is spooled (one whole-message copy, not two).
        envelope.content = envelope.original_content = None
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
            log.info("refused a message from %s: <%s> -> %d recipient(s): %s", peer, sender, len(rcpts), e.reply,
                     extra={"outcome": "refused", "peer": peer, "sender": sender, "recipients": len(rcpts),
                            "reply": e.reply})
            self._metrics.smtp_transactions.labels(result="rejected").inc()
            return e.reply
        del raw
        cset = accepted.configuration_set
        mail = records.mail_info(
            message_id=accepted.message_id, timestamp=now_dt, source=sender,
            destination=rcpts, header_block=accepted.header_block, headers=accepted.headers,
            configuration_set=cset.name if cset else None, message_tags=accepted.tags,
            source_ip=peer, caller_identity=_auth_user(session),
        )
        job = Job(message_id=accepted.message_id, accepted_at=now,
                  configuration_set=cset.name if cset else None, mail_from=sender,
                  mail=mail, tracked=bool(cset and (cset.tracks_opens or cset.tracks_clicks)),
                  attempts={r: 0 for r in dict.fromkeys(rcpts)}, due=now, data=accepted.data,
                  list_management=accepted.list_management)
        try:
            # The Send event is committed with the message: a crash cannot lose one.
            await self._spool.put(job, self._bus.statements(job.configuration_set, records.send_event(mail),
                                                            recipient_count=len(job.attempts)))
        except Exception:  # noqa: BLE001 - nothing is accepted that is not stored
            log.exception("refused a message from %s: <%s> -> %d recipient(s): %s (could not spool it)",
                          peer, sender, len(rcpts), TEMP_FAILURE,
                          extra={"outcome": "refused", "peer": peer, "sender": sender, "recipients": len(rcpts),
                                 "reply": TEMP_FAILURE})
            self._metrics.smtp_transactions.labels(result="failed").inc()
            return TEMP_FAILURE
        self._bus.committed()
        self._schedule.add(job)
        self._metrics.smtp_transactions.labels(result="accepted").inc()
        log.info("accepted %s from %s: <%s> -> %d recipient(s), configuration set %s",
                 job.message_id, peer, job.mail_from, len(rcpts), job.configuration_set or "-",
                 extra={"outcome": "accepted", "message_id": job.message_id, "peer": peer, "sender": job.mail_from,
                        "recipients": len(rcpts), "configuration_set": job.configuration_set})
        return f"250 Ok {job.message_id}"


def _peer_ip(session: Session) -> str:
    peer: Any = session.peer
    return peer_ip(peer)


def declared_size(mail_options: list[str]) -> int:
    """The SIZE= of MAIL (aiosmtpd checked it is digits and within the limit), at least a slice."""
    for option in mail_options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return max(int(value), GROW_STEP)
    return GROW_STEP


def _auth_user(session: Session) -> str | None:
    login = getattr(session.auth_data, "login", None)  # login_data is deprecated in aiosmtpd
    return login.decode("utf-8", "replace") if isinstance(login, bytes) else login
