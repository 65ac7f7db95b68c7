# Inbound feedback reports, bytes in -> typed value out: RFC 3464 delivery status notifications,
# RFC 5965 ARF complaints, plain-text bounces (flufl.bounce) and RFC 3834 auto-replies.
# Pure and total: parse_report never raises, and its work is bounded.
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32

from relay.feedback import fields as f
from relay.feedback import plain

# Bounds on the work for one report. A DSN or ARF carries what matters (the notification, the
# report fields, the original's headers) at its start; the returned original's body can be cut.
MAX_REPORT_BYTES = 1 << 20
MAX_CONTAINERS = 64  # multipart/* and message/* parts parsed; the rest of the input is dropped
MAX_DELIMITERS = 1000  # lines starting with "--" (MIME boundaries) parsed; likewise
MAX_PARTS = 256  # parts looked at
MAX_DEPTH = 12  # nesting looked into
MAX_RECIPIENTS = 1000  # recipients read from one report
MAX_BOUNCE_SCAN_BYTES = 256 << 10  # what flufl.bounce's heuristics read
MAX_VALUE_CHARS = f.MAX_VALUE_CHARS

_DSN_TYPES = ("message/delivery-status", "message/global-delivery-status")  # RFC 3464, RFC 6533
_ARF_TYPE = "message/feedback-report"  # RFC 5965 §3
_ORIGINAL_TYPES = ("message/rfc822", "text/rfc822-headers", "message/global", "message/global-headers")


@dataclass(frozen=True, kw_only=True)
class RecipientStatus:  # one per-recipient block of an RFC 3464 DSN
    address: str  # Final-Recipient address (type rfc822 stripped), else Original-Recipient
    original_recipient: str | None
    action: str | None  # lower case: failed | delayed | delivered | relayed | expanded
    status: str | None  # "5.1.1"
    diagnostic_code: str | None  # as written, unfolded: "smtp; 550 5.1.1 <x@y>: Recipient address rejected"
    remote_mta: str | None


@dataclass(frozen=True, kw_only=True)
class BounceReport:
    recipients: tuple[RecipientStatus, ...]
    reporting_mta: str | None  # "dns; mx.example.net" as written in the DSN
    arrival_date: datetime | None  # aware UTC
    original_headers: tuple[tuple[str, str], ...]  # from text/rfc822-headers or message/rfc822 (unfolded)
    standard: bool  # True: RFC 3464; False: recognised heuristically (non-standard bounce)


@dataclass(frozen=True, kw_only=True)
class ComplaintReport:  # RFC 5965 ARF
    feedback_type: str  # lower case Feedback-Type: abuse | fraud | virus | other | not-spam | auth-failure ...
    user_agent: str | None
    arrival_date: datetime | None
    original_recipients: tuple[str, ...]  # Original-Rcpt-To (all of them)
    original_mail_from: str | None
    source_ip: str | None
    original_headers: tuple[tuple[str, str], ...]  # the returned original's headers
    reported_domain: str | None = None  # Reported-Domain (RFC 5965 §3.2), when given


@dataclass(frozen=True, kw_only=True)
class AutoReply:  # RFC 3834 Auto-Submitted: auto-replied, vacation, out-of-office
    reason: str


@dataclass(frozen=True, kw_only=True)
class Unrecognised:
    reason: str  # short, for a log line


Report = BounceReport | ComplaintReport | AutoReply | Unrecognised


def parse_report(data: bytes) -> Report:
    """Read one inbound message addressed to the return path or a feedback address.

    Order: an ARF anywhere in the message (a DSN wrapping an ARF is an ARF), then an RFC 3464
    delivery-status part, then a plain-text bounce (flufl.bounce, on mail from a mailer only),
    then an auto-reply (checked after the reports: RFC 3464 §5 DSNs and Exim's plain bounces
    carry Auto-Submitted too). Never raises: anything unexpected is Unrecognised, with why.
    """
    try:
        return _parse(data)
    except RecursionError:
        return Unrecognised(reason="nested too deeply to read")
    except Exception as e:  # totality: a broken report is a log line, never a crash
        return Unrecognised(reason=f"unreadable ({type(e).__name__})")


def _parse(data: bytes) -> Report:
    if not isinstance(data, bytes | bytearray | memoryview):
        return Unrecognised(reason="not bytes")
    data = _bounded(bytes(data[:MAX_REPORT_BYTES]))
    if not data.strip():
        return Unrecognised(reason="empty message")
    msg = BytesParser(policy=compat32).parsebytes(data)
    parts = list(_walk(msg))
    for i, (part, parent) in enumerate(parts):
        if part.get_content_type() == _ARF_TYPE:
            return _complaint(part, _original_after(parts, i, parent))
    for i, (part, parent) in enumerate(parts):
        if part.get_content_type() in _DSN_TYPES:
            report = _bounce(part, _original_after(parts, i, parent))
            if report.recipients:
                return report
            # A delivery-status part naming no recipient: the notification text may.
            found = _plain_bounce(data, report.reporting_mta, report.original_headers)
            return found or Unrecognised(reason="delivery-status part names no recipient")
    found = _plain_bounce(data, None, f.original_headers(_original_after(parts, -1, None)))
    if found is not None:
        return found
    reason = plain.auto_reply(msg)
    if reason is not None:
        return AutoReply(reason=reason)
    return Unrecognised(reason="neither a bounce, a complaint nor an auto-reply")


# -- bounds -----------------------------------------------------------------------------------

_CONTAINER = re.compile(rb"^content-type:\s*(?:multipart|message)/", re.IGNORECASE | re.MULTILINE)
_DELIMITER = re.compile(rb"^--", re.MULTILINE)


def _bounded(data: bytes) -> bytes:
    """Drop what follows the MAX_CONTAINERS-th multipart/message part (the email package parses
    nesting recursively: 1,000 nested multiparts would exhaust the stack) and the
    MAX_DELIMITERS-th boundary-like line (200,000 empty parts take seconds to build)."""
    for pattern, limit in ((_CONTAINER, MAX_CONTAINERS), (_DELIMITER, MAX_DELIMITERS)):
        for n, m in enumerate(pattern.finditer(data)):
            if n == limit:
                data = data[: m.start()]
                break
    return data


def _walk(msg: Message) -> Iterator[tuple[Message, Message | None]]:
    """Parts in document order with their parent, at most MAX_PARTS, MAX_DEPTH deep."""
    stack: list[tuple[Message, Message | None, int]] = [(msg, None, 0)]
    seen = 0
    while stack and seen < MAX_PARTS:
        part, parent, depth = stack.pop()
        seen += 1
        yield part, parent
        # A report part's payload is its field blocks, not parts to descend into. (is_multipart
        # first: get_payload() of a text part decodes it with its charset parameter, and
        # raises ValueError on a charset name with a NUL in it.)
        if depth >= MAX_DEPTH or not part.is_multipart() or part.get_content_type() in _DSN_TYPES:
            continue
        children = [child for child in part.get_payload() if isinstance(child, Message)]
        stack.extend((child, part, depth + 1) for child in reversed(children))


def _original_after(parts: list[tuple[Message, Message | None]], index: int, parent: Message | None) -> Message | None:
    """The returned original for the report part at `index`: its first following sibling of an
    original's type (RFC 3462 §1: the third part of the multipart/report), else any later one.
    Index -1: the first one in the message (a plain bounce sent as MIME)."""
    later = [(part, p) for part, p in parts[index + 1:] if part.get_content_type() in _ORIGINAL_TYPES]
    for part, p in later:
        if p is parent:
            return part
    return later[0][0] if later else None


# -- RFC 3464 ---------------------------------------------------------------------------------

_KEYWORD = re.compile(r"[A-Za-z][A-Za-z-]*")  # an Action or Feedback-Type value, comments dropped
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?![\d.])")  # RFC 3463 §2


def _bounce(part: Message, original: Message | None) -> BounceReport:
    reporting_mta: str | None = None
    arrival: datetime | None = None
    recipients: list[RecipientStatus] = []
    # RFC 3464 §2.1: a per-message block, then per-recipient blocks. Each block is read for what
    # it holds, since some MTAs order (Exim: Action first) or merge the blocks their own way.
    for block in f.blocks(part):
        reporting_mta = reporting_mta or f.first(block, "reporting-mta")
        arrival = arrival or f.date(f.first(block, "arrival-date"))
        final = f.address(f.first(block, "final-recipient"))
        original_rcpt = f.address(f.first(block, "original-recipient"))
        address = final or original_rcpt
        if address is None or len(recipients) >= MAX_RECIPIENTS:
            continue
        action = _KEYWORD.match(f.first(block, "action") or "")
        status = _STATUS.match(f.first(block, "status") or "")
        recipients.append(RecipientStatus(
            address=address,
            original_recipient=original_rcpt,
            action=action.group(0).lower() if action else None,
            status=status.group(0) if status else None,
            diagnostic_code=f.first(block, "diagnostic-code"),
            remote_mta=f.first(block, "remote-mta"),
        ))
    return BounceReport(recipients=tuple(recipients), reporting_mta=reporting_mta, arrival_date=arrival,
                        original_headers=f.original_headers(original), standard=True)


# -- RFC 5965 ---------------------------------------------------------------------------------

def _complaint(part: Message, original: Message | None) -> ComplaintReport:
    report = [field for block in f.blocks(part) for field in block]
    kind = _KEYWORD.match(f.first(report, "feedback-type") or "")
    return ComplaintReport(
        # RFC 5965 §3.1 requires Feedback-Type; a report without one is taken as "other".
        feedback_type=kind.group(0).lower() if kind else "other",
        user_agent=f.first(report, "user-agent"),
        # Arrival-Date is RFC 5965's name; Yahoo's reports say Received-Date.
        arrival_date=f.date(f.first(report, "arrival-date")) or f.date(f.first(report, "received-date")),
        original_recipients=tuple(a for v in f.every(report, "original-rcpt-to") if (a := f.address(v)))[
            :MAX_RECIPIENTS],
        original_mail_from=f.address(f.first(report, "original-mail-from")),
        source_ip=f.first(report, "source-ip"),
        original_headers=f.original_headers(original),
        reported_domain=f.first(report, "reported-domain"),
    )


# -- plain-text bounces -------------------------------------------------------------------------

_HEAD_END = re.compile(rb"\r?\n\r?\n")


def _plain_bounce(data: bytes, reporting_mta: str | None,
                  original_headers: tuple[tuple[str, str], ...]) -> BounceReport | None:
    """A bounce flufl.bounce recognises, each address with the enhanced status written after it
    in the notification, if any (RFC 3463; qmail's "(#5.1.1)")."""
    head = data[:MAX_BOUNCE_SCAN_BYTES]
    found = plain.bounced(BytesParser(policy=compat32).parsebytes(head))
    if not found:
        return None
    # The body, not the header (X-Failed-Recipients names the address too, far from its status).
    end = _HEAD_END.search(head)
    body = head[end.end() if end else 0:].decode("utf-8", "replace")
    recipients = tuple(
        RecipientStatus(address=address, original_recipient=None, action=action,
                        status=plain.status_near(body, address), diagnostic_code=None, remote_mta=None)
        for address, action in found[:MAX_RECIPIENTS])
    return BounceReport(recipients=recipients, reporting_mta=reporting_mta, arrival_date=None,
                        original_headers=original_headers, standard=False)
