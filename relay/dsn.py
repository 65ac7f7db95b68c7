# RFC 3464 delivery status notifications: the multipart/report bounce (RFC 6522) that relay
# sends to the envelope sender when it gives up on recipients. Pure: values in, bytes out;
# the clock and the message id are parameters.
from __future__ import annotations

import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

_CRLF = "\r\n"
# RFC 3464 §2.3.4: status-code = DIGIT "." 1*3DIGIT "." 1*3DIGIT (class 2, 4 or 5, RFC 3463).
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
# RFC 6533 §3: in an address that is not ASCII, everything but these is written \x{HEX}.
_QCHAR = re.compile(r"[\x21-\x2a\x2c-\x3c\x3e-\x5b\x5d-\x7e]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TOKEN = re.compile(r"[\x21-\x3b\x3d\x3f-\x7e]+")  # printable ASCII but "<" and ">"


@dataclass(frozen=True, kw_only=True)
class FailedRecipient:
    recipient: str
    status: str  # RFC 3463 enhanced status, e.g. "5.1.1"
    diagnostic: str  # the upstream reply text, e.g. "550 5.1.1 user unknown"
    remote_mta: str | None = None  # host name or address of the MTA that refused


def build_dsn(*, reporting_mta: str, envid: str, original_sender: str, original_headers: bytes,
              failed: Sequence[FailedRecipient], arrival_date: datetime, now: datetime,
              message_id: str) -> bytes:
    """The complete bounce message, CRLF line endings.

    `envid` is the original envelope id as plain text (RFC 3464 §2.2.1; not xtext); the
    Original-Envelope-Id field is left out when it is empty. The result is 7-bit unless the
    sender address itself is not ASCII: then the To: field carries it as UTF-8 (RFC 6532),
    which is fine because such a sender can only be reached over SMTPUTF8 anyway.
    """
    # RFC 5321 §4.5.5: a message with the null reverse-path ("MAIL FROM:<>") must never be
    # answered with a DSN; the caller checks, and an empty sender here is a bug.
    if not original_sender:
        raise ValueError("no DSN is sent to the null sender <> (RFC 5321 §4.5.5)")
    if not failed:
        raise ValueError("a DSN needs at least one failed recipient")
    if _CONTROL.search(original_sender):
        raise ValueError(f"original_sender is not usable in a header field: {original_sender!r}")
    for name, value in (("reporting_mta", reporting_mta), ("message_id", message_id)):
        if not _TOKEN.fullmatch(value):
            raise ValueError(f"{name} must be non-empty printable ASCII without spaces or <>: {value!r}")
    if _CONTROL.search(envid) or not envid.isascii():
        raise ValueError(f"envid must be printable ASCII: {envid!r}")
    for when in (arrival_date, now):
        if when.tzinfo is None:
            raise ValueError(f"datetime must be timezone-aware: {when!r}")
    for f in failed:
        if not _STATUS.fullmatch(f.status):
            raise ValueError(f"not an RFC 3463 status code: {f.status!r}")

    report = _report(reporting_mta, envid, arrival_date, failed)
    headers_type, headers_cte, headers_body = _original_headers(original_headers)
    parts = [
        _part("Notification", *_notification(reporting_mta, failed)),
        _part("Delivery report", "message/delivery-status", "7bit", report),
        _part("Undelivered Message Headers", headers_type, headers_cte, headers_body),
    ]
    boundary = _boundary(message_id, parts)

    head = _CRLF.join([
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: {original_sender}",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {format_datetime(now)}",
        f"Message-ID: <{message_id}>",
        "MIME-Version: 1.0",
        "Auto-Submitted: auto-replied",  # RFC 3834 §5: keeps autoresponders from answering
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{boundary}"',
    ]).encode("utf-8") + b"\r\n\r\n"
    delimiter = b"\r\n--" + boundary.encode("ascii")
    body = b"This is a MIME-encapsulated message.\r\n"
    for part in parts:
        body += delimiter + b"\r\n" + part
    return head + body + delimiter + b"--\r\n"


def _notification(reporting_mta: str, failed: Sequence[FailedRecipient]) -> tuple[str, str, bytes]:
    """RFC 6522 §3: the first part is a human-readable explanation."""
    lines = [
        f"This is the mail system at host {reporting_mta}.",
        "",
        "Your message could not be delivered to one or more recipients.",
        "The delivery report and the headers of your message are attached.",
        "",
    ]
    for f in failed:
        remote = f" (remote host {_one_line(f.remote_mta)})" if f.remote_mta else ""
        lines.append(f"<{_one_line(f.recipient)}>: {_one_line(f.diagnostic)}{remote}")
    text = _CRLF.join(lines) + _CRLF
    if text.isascii():
        data = text.encode("ascii")
        if _is_7bit(data):
            return "text/plain; charset=us-ascii", "7bit", data
    return "text/plain; charset=utf-8", "quoted-printable", _qp(text.encode("utf-8"))


def _report(reporting_mta: str, envid: str, arrival_date: datetime,
            failed: Sequence[FailedRecipient]) -> bytes:
    """RFC 3464 §2.1: per-message fields, then one block per recipient, blank-line separated."""
    blocks = [[f"Reporting-MTA: dns; {reporting_mta}"]]
    if envid:  # RFC 3464 §2.2.1: only when the sender gave an ENVID
        blocks[0].append(f"Original-Envelope-Id: {envid}")
    blocks[0].append(f"Arrival-Date: {format_datetime(arrival_date)}")
    for f in failed:
        block = [
            f"Final-Recipient: {_address(f.recipient)}",
            "Action: failed",
            f"Status: {f.status}",
        ]
        if f.remote_mta:
            block.append(f"Remote-MTA: dns; {_ascii(_one_line(f.remote_mta))}")
        block.append(_fold(f"Diagnostic-Code: smtp; {_ascii(_one_line(f.diagnostic))}"))
        blocks.append(block)
    return (_CRLF + _CRLF).join(_CRLF.join(b) for b in blocks).encode("ascii") + b"\r\n"


def _original_headers(raw: bytes) -> tuple[str, str, bytes]:
    """The third part: the original header block (RFC 6522 §3, text/rfc822-headers).

    Only the header block is kept, with CRLF line endings. Headers that are not 7-bit clean
    (SMTPUTF8 mail, or raw 8-bit junk) are quoted-printable encoded so the DSN stays 7-bit;
    valid UTF-8 headers are labelled message/global-headers, which RFC 6533 §6.3 allows to
    carry a quoted-printable encoding. The encoding is lossless either way.
    """
    lines: list[bytes] = []
    for line in re.split(rb"\r\n|\n", raw):
        if not line:
            break  # the blank line ends the header block, in case a whole message was given
        lines.append(line)
    data = b"".join(line + b"\r\n" for line in lines)
    if _is_7bit(data):
        return "text/rfc822-headers", "7bit", data
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "text/rfc822-headers", "quoted-printable", _qp(data)
    return "message/global-headers", "quoted-printable", _qp(data)


def _part(description: str, content_type: str, cte: str, body: bytes) -> bytes:
    head = f"Content-Description: {description}\r\nContent-Type: {content_type}\r\n"
    if cte != "7bit":
        head += f"Content-Transfer-Encoding: {cte}\r\n"
    return head.encode("ascii") + b"\r\n" + body


def _boundary(message_id: str, parts: Sequence[bytes]) -> str:
    # Derived from the message id so the output is reproducible; RFC 2046 §5.1.1 forbids
    # the delimiter inside the parts, so a (practically impossible) clash picks another.
    seed = hashlib.sha256(message_id.encode("utf-8")).hexdigest()[:24]
    n = 0
    while True:
        boundary = f"=_relay-dsn-{seed}" + (f"-{n}" if n else "")
        if not any(b"--" + boundary.encode("ascii") in p for p in parts):
            return boundary
        n += 1


def _one_line(text: str) -> str:
    # Multiline replies arrive joined by newlines; a DSN field is a single (folded) line.
    return " ".join(text.split())


def _ascii(text: str) -> str:
    # message/delivery-status is ASCII (RFC 3464 §2.1); other characters are written the
    # RFC 6533 §3 way, \x{HEX}, so nothing is lost.
    return "".join(c if " " <= c <= "~" else f"\\x{{{ord(c):02X}}}" for c in text)


def _address(addr: str) -> str:
    """RFC 3464 §2.3.2 Final-Recipient value; RFC 6533 §3 "utf-8" type when not ASCII."""
    if addr.isascii():
        return f"rfc822; {_ascii(addr)}"
    return "utf-8; " + "".join(c if _QCHAR.fullmatch(c) else f"\\x{{{ord(c):02X}}}" for c in addr)


def _fold(line: str, limit: int = 78) -> str:
    """Fold a field at spaces (RFC 5322 §2.2.3); a run without spaces longer than 900
    characters is cut so no line can break the 998-character limit (RFC 5322 §2.1.1)."""
    out: list[str] = []
    rest = line
    while len(rest) > limit:
        cut = rest.rfind(" ", 1, limit + 1)
        if cut <= 0:
            cut = rest.find(" ", limit + 1)
            if cut < 0 or cut > 900:
                cut = 900 if len(rest) > 900 else -1
        if cut < 0:
            break
        out.append(rest[:cut])
        rest = rest[cut:] if rest[cut] == " " else " " + rest[cut:]
    out.append(rest)
    return _CRLF.join(out)


def _is_7bit(data: bytes) -> bool:
    """RFC 2045 §2.7: ASCII, no NUL, CR and LF only as CRLF, lines of at most 998 octets."""
    if not data.isascii() or b"\x00" in data:
        return False
    lines = data.split(b"\r\n")
    return all(b"\r" not in ln and b"\n" not in ln and len(ln) <= 998 for ln in lines)


def _qp(data: bytes) -> bytes:
    # RFC 2045 §6.7; the input always has CRLF line breaks, so the encoder keeps CRLF.
    return binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
