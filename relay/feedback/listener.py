# The inbound feedback listener ([feedback] listen; port 25 in production): an SMTP
# server for the mail that comes back — DSNs to the VERP return paths, ARF reports to
# the feedback-loop addresses. It accepts mail for those addresses only (550 5.7.1 for
# anything else: it never relays), needs no AUTH (the internet delivers bounces) and
# has its own size and connection limits. Each report becomes SES Bounce or Complaint
# events for the message and recipient it is about, committed with the suppression
# list's new entries; auto-replies and what cannot be attributed are logged and counted.
from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import time
from datetime import datetime, timezone
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from relay.config import Config, SmtpConfig
from relay.events.bus import EventBus
from relay.feedback import attribution
from relay.feedback.reports import AutoReply, BounceReport, ComplaintReport, parse_report
from relay.intake import new_message_id
from relay.limits import LogThrottle
from relay.metrics import Metrics
from relay.return_path import ReturnPathClaim, ReturnPaths
from relay.smtp import address as addresses
from relay.smtp.handler import declared_size
from relay.smtp.server import SmtpServer
from relay.smtp.session import RelaySMTP, log_throttled, peer_ip
from relay.spool import Spool
from relay.store import Statement
from relay.store.suppression import suppress_statements

log = logging.getLogger("relay.feedback")

ANYWHERE = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
MAX_RECIPIENTS = 50
PARSE_INLINE = 64 * 1024  # bigger reports are parsed off the event loop

NOT_OURS = "550 5.7.1 <{addr}>: relaying denied (this server takes bounces and feedback reports only)"
UNKNOWN = "550 5.1.1 <{addr}>: no such return path"
BAD_ADDRESS = "501 5.1.3 Bad recipient address syntax"
BAD_SENDER = "501 5.1.7 Bad sender address syntax"
TOO_MANY = "452 4.5.3 Too many recipients"
NO_STORAGE = "451 4.3.1 Insufficient system storage: try again later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down: try again later"
TEMP_FAILURE = "451 4.3.0 Report not recorded: try again later"


def return_path_domains(config: Config) -> tuple[str, ...]:
    """Every return path domain in use: the global one and the sets' own."""
    domains = [config.feedback.return_path_domain] + [s.return_path_domain for s in config.configuration_sets.values()]
    return tuple(dict.fromkeys(d for d in domains if d))


def listener_config(config: Config) -> Config:
    """The config an SmtpServer for the feedback listener runs on: [feedback]'s limits,
    open to every client (bounces come from anywhere), no AUTH, no TLS."""
    fb = config.feedback
    assert fb.listen is not None
    smtp = SmtpConfig(listen=fb.listen, hostname=config.smtp.hostname, max_message_size=fb.max_message_size,
                      max_recipients=MAX_RECIPIENTS, allowed_clients=ANYWHERE,
                      max_connections=fb.max_connections, max_connections_per_client=fb.max_connections_per_client,
                      timeout=fb.timeout, max_concurrent_data_bytes=4 * fb.max_message_size)
    return dataclasses.replace(config, smtp=smtp)


class FeedbackHandler:
    """aiosmtpd hooks of the feedback listener (the interface SmtpServer drives)."""

    def __init__(self, *, config: Config, spool: Spool, bus: EventBus, return_paths: ReturnPaths,
                 metrics: Metrics | None = None) -> None:
        self._config = config
        self._spool = spool
        self._bus = bus
        self._return_paths = return_paths
        self._metrics = metrics or Metrics()
        self._domains = return_path_domains(config)
        self._addresses = frozenset(config.feedback.addresses)
        self._throttle = LogThrottle()
        self.in_flight = 0
        self.accepting = True

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        if not self.accepting:
            return SHUTTING_DOWN
        if addresses.problem(address, recipient=False) is not None:
            return BAD_SENDER
        if isinstance(server, RelaySMTP) and not server.reserve_data(declared_size(mail_options)):
            return NO_STORAGE
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if addresses.problem(address, recipient=True) is not None:
            return BAD_ADDRESS
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return TOO_MANY
        if address.lower() not in self._addresses:
            if not self._return_paths.is_return_path(address, self._domains):
                peer = peer_ip(session.peer)
                log_throttled(self._throttle, f"relay:{peer}", logging.INFO,
                              "feedback listener: refused RCPT %r from %s: not a return path or feedback address",
                              address, peer)
                return NOT_OURS.format(addr=address)
            if self._return_paths.verify(address, self._domains) is None:
                return UNKNOWN.format(addr=address)  # a forged or damaged token
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.in_flight += 1
        try:
            raw = bytes(envelope.original_content or b"")
            envelope.content = envelope.original_content = None
            try:
                await self.process(raw, list(envelope.rcpt_tos), peer=peer_ip(session.peer))
            except Exception:  # noqa: BLE001 - e.g. the disk is full: the sender tries again
                log.exception("feedback listener: a report from %s was not recorded", peer_ip(session.peer))
                return TEMP_FAILURE
            return "250 OK"
        finally:
            self.in_flight -= 1

    async def process(self, raw: bytes, rcpts: list[str], *, peer: str) -> None:
        """Parse one report, attribute it, commit its events; logs what it did."""
        report = await asyncio.to_thread(parse_report, raw) if len(raw) > PARSE_INLINE else parse_report(raw)
        if isinstance(report, AutoReply):
            self._count("auto_reply")
            log.info("feedback listener: an auto-reply from %s (%s): not a bounce, nothing recorded", peer,
                     report.reason, extra={"outcome": "auto_reply", "peer": peer})
            return
        if not isinstance(report, (BounceReport, ComplaintReport)):
            self._count("unrecognised")
            log.info("feedback listener: a message from %s is neither a DSN nor a feedback report (%s): "
                     "nothing recorded", peer, getattr(report, "reason", "?"),
                     extra={"outcome": "unrecognised", "peer": peer})
            return
        claims = [c for c in (self._return_paths.verify(r, self._domains) for r in rcpts) if c is not None]
        if not claims:  # to a feedback address: the returned original's headers say which message
            claims = [c for c in (self._return_paths.verify(a, self._domains)
                                  for a in attribution.verp_candidates(report.original_headers)) if c is not None]
        targets: list[tuple[str, int | None]] = [(c.message_id, c.recipient_index) for c in dict.fromkeys(claims)]
        if not targets:
            header_id = attribution.header_message_id(report.original_headers)
            found = await self._spool.by_header_message_id(header_id) if header_id else None
            if found is not None:
                targets = [(found, None)]
        if not targets:
            self._unattributed(report, peer, "no return path token and no known Message-ID in it")
            return
        for message_id, index in targets[:MAX_RECIPIENTS]:
            await self._record(report, ReturnPathClaim(message_id, index) if index is not None else None,
                               message_id, peer)

    async def _record(self, report: BounceReport | ComplaintReport, claim: ReturnPathClaim | None,
                      message_id: str, peer: str) -> None:
        found = await self._spool.mail(message_id)
        if found is None:
            self._unattributed(report, peer, f"message {message_id} is not (or no longer) in the storage")
            return
        cset, mail = found
        if claim is not None:
            if claim.recipient_index >= len(mail.destination):
                self._unattributed(report, peer, f"recipient {claim.recipient_index} of {message_id} does not exist")
                return
            recipients = [mail.destination[claim.recipient_index]]
        elif isinstance(report, BounceReport):
            recipients = attribution.dsn_recipients(report, mail.destination)
        else:
            recipients = attribution.complaint_recipients(report, mail.destination)
        now = time.time()
        now_dt = datetime.fromtimestamp(now, timezone.utc)
        reasons = self._config.suppressed_reasons(cset)
        if isinstance(report, BounceReport):
            decision = attribution.bounce(report, mail=mail, recipients=recipients, now=now_dt,
                                          feedback_id=new_message_id(now), reporting_mta=peer,
                                          suppress_reasons=reasons)
        else:
            decision = attribution.complaint(report, mail=mail, recipients=recipients, now=now_dt,
                                             feedback_id=new_message_id(now), suppress_reasons=reasons)
        if decision.ignored is not None:
            self._count("not_a_failure")
            log.info("feedback listener: a report from %s about %s: %s; nothing recorded", peer, message_id,
                     decision.ignored, extra={"outcome": "not_a_failure", "peer": peer, "message_id": message_id})
            return
        stmts: list[Statement] = []
        for record, rcpt in decision.events:
            stmts += self._bus.statements(cset, record, rcpt)
        for address, reason in decision.suppress:
            stmts += suppress_statements(address, reason, message_id, now)
        await self._spool.write(stmts)
        self._bus.committed()
        kind = "bounce" if isinstance(report, BounceReport) else "complaint"
        for record, rcpt in decision.events:
            self._count(kind)
            what = (f"{record['bounce']['bounceType']} bounce ({record['bounce']['bounceSubType']})"
                    if kind == "bounce" else f"complaint ({record['complaint'].get('complaintFeedbackType', '-')})")
            log.info("feedback: %s for %s to %s, reported by %s", what, message_id, rcpt, peer,
                     extra={"outcome": kind, "message_id": message_id, "recipient": rcpt, "peer": peer})
        for address, reason in decision.suppress:
            log.info("suppression list: added %s (%s, message %s)", address, reason, message_id,
                     extra={"outcome": "suppressed", "recipient": address, "message_id": message_id})

    def _unattributed(self, report: Any, peer: str, why: str) -> None:
        self._count("unattributed")
        kind = "DSN" if isinstance(report, BounceReport) else "feedback report"
        log_throttled(self._throttle, f"unattributed:{peer}", logging.WARNING,
                      "feedback listener: a %s from %s matches no message relay sent (%s); nothing recorded",
                      kind, peer, why, extra={"outcome": "unattributed", "peer": peer})

    def _count(self, result: str) -> None:
        self._metrics.feedback_reports.labels(result=result).inc()


class FeedbackListener:
    """The listening socket: relay's SMTP server machinery (connection caps, idle timeout,
    DATA memory budget, graceful stop) with the feedback handler."""

    def __init__(self, config: Config, handler: FeedbackHandler) -> None:
        assert config.feedback.listen is not None
        self._listen = config.feedback.listen
        self._server = SmtpServer(listener_config(config), handler, name="feedback")

    async def start(self) -> None:
        try:
            await self._server.start()
        except OSError as e:  # one line naming the key, as for the other listeners
            raise OSError(e.errno, f"feedback.listen {self._listen}: {e.strerror or e}") from None

    async def stop(self) -> None:
        await self._server.stop()
