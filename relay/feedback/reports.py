# Inbound feedback reports, bytes in -> typed value out: RFC 3464 delivery status notifications,
# RFC 5965 ARF complaints, RFC 3834 auto-replies, and plain-text bounces recognised by the
# flufl.bounce library. Pure and total: parse_report never raises, and its work is bounded.
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser, HeaderParser
from email.policy import compat32
from email.utils import getaddresses, parsedate_to_datetime

from flufl.bounce import all_failures

# Bounds on the work for one report. A DSN or ARF carries what matters (the notification, the
# report fields, the original's headers) at its start; the returned original's body can be cut.
MAX_REPORT_BYTES = 1 << 20
MAX_CONTAINERS = 64  # multipart/* and message/* parts parsed; the rest of the input is dropped
MAX_DELIMITERS = 1000  # lines starting with "--" (MIME boundaries) parsed; likewise
MAX_PARTS = 256  # parts looked at
MAX_DEPTH = 12  # nesting looked into
MAX_VALUE_CHARS = 2048  # one header or report field value
MAX_FIELDS = 256  # header fields kept from one header block
MAX_RECIPIENTS = 1000  # per-recipient blocks read from one DSN
MAX_BOUNCE_SCAN_BYTES = 256 << 10  # what flufl.bounce's heuristics read

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
    reported_domain: str | None = None


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
    delivery-status part, then a non-standard bounce (flufl.bounce), then an auto-reply (checked
    after the reports: RFC 3464 §5 DSNs and Exim's plain bounces carry Auto-Submitted too).
    Never raises: anything unexpected becomes Unrecognised with the reason.
    """
    try:
        return _parse(data)
    except RecursionError:
        return Unrecognised(reason="nested too deeply to read")
    except Exception as e:  # the promise is totality: broken input is a log line, never a crash
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
            found = _nonstandard(msg, data, report.reporting_mta, report.original_headers)
            return found or Unrecognised(reason="delivery-status part names no recipient")
    found = _nonstandard(msg, data, None, _headers(_original_after(parts, -1, None)))
    if found is not None:
        return found
    reason = _auto_reply(msg)
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
        payload = part.get_payload()
        # message/delivery-status payloads are lists of field blocks, not parts to descend into.
        if depth >= MAX_DEPTH or not isinstance(payload, list) or part.get_content_type() in _DSN_TYPES:
            continue
        children = [child for child in payload if isinstance(child, Message)]
        stack.extend((child, part, depth + 1) for child in reversed(children))


def _original_after(parts: list[tuple[Message, Message | None]], index: int, parent: Message | None) -> Message | None:
    """The returned original for the report part at `index`: its first following sibling of an
    original's type (RFC 3462 §1: third part of the multipart/report), else any later one.
    Index -1: the first one in the message (a non-standard bounce in MIME)."""
    later = [(part, p) for part, p in parts[index + 1:] if part.get_content_type() in _ORIGINAL_TYPES]
    for part, p in later:
        if p is parent:
            return part
    return later[0][0] if later else None


# -- values -----------------------------------------------------------------------------------

_FOLD = re.compile(r"\r?\n[ \t]+")


def _text(value: object) -> str:
    """A header or field value as text: folding collapsed to one space, undecodable bytes
    (kept by the parser as surrogates) read as UTF-8 with replacement, capped."""
    s = value if isinstance(value, str) else str(value)
    s = _decoded(s.encode("utf-8", "surrogateescape"))
    s = _FOLD.sub(" ", s).replace("\r", "").replace("\n", " ").replace("\x00", "")
    return s.strip()[:MAX_VALUE_CHARS]


def _decoded(raw: bytes) -> str:
    """8-bit header bytes: UTF-8 (RFC 6532) when they are, else Latin-1, which keeps every byte
    (a "müller" address from a legacy MTA stays readable instead of becoming U+FFFD)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _fields(block: Message) -> list[tuple[str, str]]:
    return [(_text(name), _text(value)) for name, value in list(block.raw_items())[:MAX_FIELDS]]


def _first(fields: list[tuple[str, str]], name: str) -> str | None:
    for k, v in fields:
        if k.lower() == name:
            return v or None
    return None


def _all(fields: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in fields if k.lower() == name and v]


def _address(value: str | None) -> str | None:
    """RFC 3464 §2.3.2 "address-type; address" (rfc822, utf-8) -> the address, without <>."""
    if not value:
        return None
    if ";" in value:
        value = value.split(";", 1)[1]
    value = value.strip().strip("<>").strip()
    return value or None


def _date(value: str | None) -> datetime | None:
    """An RFC 5322 date as aware UTC; "-0000" or no zone is taken as UTC (RFC 5322 §3.3)."""
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc)


def _blocks(part: Message) -> list[list[tuple[str, str]]]:
    """The field blocks of a delivery-status or feedback-report part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [_fields(block) for block in payload[: MAX_RECIPIENTS + 1] if isinstance(block, Message)]
    text = part.get_payload(decode=True)
    if not isinstance(text, bytes):
        return []
    chunks = re.split(r"\r?\n[ \t]*\r?\n", text.decode("utf-8", "replace"))
    return [_fields(HeaderParser(policy=compat32).parsestr(c)) for c in chunks[: MAX_RECIPIENTS + 1] if c.strip()]


def _headers(part: Message | None) -> tuple[tuple[str, str], ...]:
    """The returned original's header fields (message/rfc822 or text/rfc822-headers)."""
    if part is None:
        return ()
    payload = part.get_payload()
    if isinstance(payload, list):
        inner = next((p for p in payload if isinstance(p, Message)), None)
        return tuple(_fields(inner)) if inner is not None else ()
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes):
        return ()
    return tuple(_fields(BytesParser(policy=compat32).parsebytes(raw, headersonly=True)))


# -- RFC 3464 ---------------------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z][A-Za-z-]*")  # an Action, Feedback-Type or Auto-Submitted keyword
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?![\d.])")


def _bounce(part: Message, original: Message | None) -> BounceReport:
    reporting_mta: str | None = None
    arrival: datetime | None = None
    recipients: list[RecipientStatus] = []
    # RFC 3464 §2.1: a per-message block, then per-recipient blocks. A block is taken for what
    # it holds, since some MTAs (Exim: Action first) order or merge fields their own way.
    for fields in _blocks(part):
        reporting_mta = reporting_mta or _first(fields, "reporting-mta")
        arrival = arrival or _date(_first(fields, "arrival-date"))
        final = _address(_first(fields, "final-recipient"))
        original_rcpt = _address(_first(fields, "original-recipient"))
        address = final or original_rcpt
        if address is None or len(recipients) >= MAX_RECIPIENTS:
            continue
        action = _WORD.match(_first(fields, "action") or "")
        status = _STATUS.match(_first(fields, "status") or "")
        recipients.append(RecipientStatus(
            address=address,
            original_recipient=original_rcpt,
            action=action.group(0).lower() if action else None,
            status=status.group(0) if status else None,
            diagnostic_code=_first(fields, "diagnostic-code"),
            remote_mta=_first(fields, "remote-mta"),
        ))
    return BounceReport(recipients=tuple(recipients), reporting_mta=reporting_mta, arrival_date=arrival,
                        original_headers=_headers(original), standard=True)


# -- RFC 5965 ---------------------------------------------------------------------------------

def _complaint(part: Message, original: Message | None) -> ComplaintReport:
    fields = [f for block in _blocks(part) for f in block]
    kind = _WORD.match(_first(fields, "feedback-type") or "")
    # Arrival-Date is RFC 5965's name; Yahoo's reports say Received-Date.
    arrival = _date(_first(fields, "arrival-date")) or _date(_first(fields, "received-date"))
    return ComplaintReport(
        # RFC 5965 §3.1 requires Feedback-Type; a report without one is taken as "other".
        feedback_type=kind.group(0).lower() if kind else "other",
        user_agent=_first(fields, "user-agent"),
        arrival_date=arrival,
        original_recipients=tuple(a for v in _all(fields, "original-rcpt-to") if (a := _address(v))),
        original_mail_from=_address(_first(fields, "original-mail-from")),
        source_ip=_first(fields, "source-ip"),
        original_headers=_headers(original),
        reported_domain=_first(fields, "reported-domain"),
    )


# -- non-standard bounces ---------------------------------------------------------------------

# RFC 3463 enhanced status of a failure (4 or 5), anywhere in the text: qmail writes "(#5.1.1)".
_ENHANCED_IN_TEXT = re.compile(r"(?<![\d.])[45]\.\d{1,3}\.\d{1,3}(?![\d.])")
_STATUS_WINDOW = 1000  # characters after an address searched for its status


def _nonstandard(msg: Message, data: bytes, reporting_mta: str | None,
                 original_headers: tuple[tuple[str, str], ...] | None) -> BounceReport | None:
    """A plain-text bounce, recognised by flufl.bounce's detectors (qmail, Exim, Postfix,
    Exchange, Yahoo, ... and generic patterns). flufl tells permanent failures from temporary
    ones: permanent ones get action "failed", temporary ones "delayed" (the listener skips them)."""
    scan = BytesParser(policy=compat32).parsebytes(data[:MAX_BOUNCE_SCAN_BYTES])
    if not getaddresses([str(scan.get("from", ""))]):
        # flufl.bounce 6.0's Yale detector indexes the From: address list, and one failing
        # detector stops the scan: give it an address that matches no detector.
        del scan["from"]
        scan["From"] = "unknown@invalid"
    try:
        temporary, permanent = all_failures(scan)
    except Exception:  # a detector's bug on odd input: no bounce recognised, never a crash
        return None
    if not temporary and not permanent:
        return None
    # The notification text: the body, not the header fields (X-Failed-Recipients names the
    # address too, far from its status).
    head_end = re.search(rb"\r?\n\r?\n", data)
    text = data[head_end.end() if head_end else 0:MAX_BOUNCE_SCAN_BYTES].decode("utf-8", "replace")
    found = [(a, "failed") for a in sorted(permanent)] + [(a, "delayed") for a in sorted(temporary - permanent)]
    recipients = []
    for raw, action in found[:MAX_RECIPIENTS]:
        address = raw.decode("ascii", "replace")
        recipients.append(RecipientStatus(address=address, original_recipient=None, action=action,
                                          status=_status_near(text, address), diagnostic_code=None,
                                          remote_mta=None))
    return BounceReport(recipients=tuple(recipients), reporting_mta=reporting_mta, arrival_date=None,
                        original_headers=original_headers if original_headers is not None else (),
                        standard=False)


def _status_near(text: str, address: str) -> str | None:
    """The first enhanced status code within _STATUS_WINDOW characters after the address's first
    mention in the notification, else None (classify_bounce then says Undetermined)."""
    at = text.lower().find(address.lower())
    if at < 0:
        return None
    m = _ENHANCED_IN_TEXT.search(text, at + len(address), at + len(address) + _STATUS_WINDOW)
    return m.group(0) if m else None


# -- RFC 3834 ---------------------------------------------------------------------------------

_VACATION_SUBJECT = re.compile(
    r"^\s*(?:auto(?:matic)?[ -]?(?:reply|response|answer)|autoreply|auto:|out of (?:the )?office|vacation"
    r"|away from (?:the|my) office|abwesenheit|automatische antwort|r[ée]ponse automatique|absence)",
    re.IGNORECASE)


def _header(msg: Message, name: str) -> str | None:
    value = msg.get(name)
    return _text(value) if value is not None else None


def _subject(msg: Message) -> str:
    raw = _header(msg, "subject") or ""
    try:
        return str(make_header(decode_header(raw)))  # RFC 2047 encoded words
    except (ValueError, LookupError, UnicodeError):
        return raw


def _auto_reply(msg: Message) -> str | None:
    # RFC 3834 §5: auto-submitted-field = "Auto-Submitted:" [CFWS] auto-submitted [CFWS]
    m = _WORD.search(_header(msg, "auto-submitted") or "")
    auto = m.group(0).lower() if m else ""
    if auto and auto != "no":  # RFC 3834 §5: anything but "no" is automatic
        return f"Auto-Submitted: {auto}"
    for name in ("x-autoreply", "x-autorespond"):
        if _header(msg, name) is not None:
            return f"{name} header"
    if (_header(msg, "precedence") or "").lower() == "auto_reply":
        return "Precedence: auto_reply"
    if _VACATION_SUBJECT.match(_subject(msg)):
        return "vacation subject"
    return None
