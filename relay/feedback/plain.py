# Inbound mail that is not a report: plain-text bounces, recognised by the flufl.bounce
# library's detectors (qmail, classic Exim, Exchange, Yahoo, ... and generic patterns), and
# RFC 3834 auto-replies. Pure.
from __future__ import annotations

import re
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses, parseaddr

from flufl.bounce import all_failures

from relay.feedback.fields import text

# What a mail delivery agent's own mail looks like: flufl.bounce's heuristics are only run on
# such mail, so that a person's reply to the return path ("Hi. This is the new list: <x@y>:",
# which its qmail detector reads as a bounce) never suppresses an address.
_DAEMON = re.compile(r"mailer-?daemon|postmaster|mail ?delivery|mail ?administrator|mail ?system", re.IGNORECASE)

# RFC 3463 enhanced status of a failure anywhere in a text: qmail writes "(#5.1.1)".
_ENHANCED_IN_TEXT = re.compile(r"(?<![\d.])[45]\.\d{1,3}\.\d{1,3}(?![\d.])")
STATUS_WINDOW = 1000  # characters after an address searched for its status


def from_a_mailer(msg: Message) -> bool:
    """RFC 5321 §4.5.5 / RFC 3464: notifications come from the null sender (Return-Path: <>),
    from a MAILER-DAEMON or postmaster, name their failed recipients (X-Failed-Recipients) or say
    they are automatic (Auto-Submitted, RFC 3834)."""
    return_path = msg.get("return-path")
    if return_path is not None and text(return_path) in ("<>", ""):
        return True
    if msg.get("x-failed-recipients") is not None or _auto_submitted(msg) not in ("", "no"):
        return True
    name, addr = parseaddr(text(msg.get("from", "")))
    return bool(_DAEMON.search(name) or _DAEMON.search(addr.split("@")[0]))


def bounced(msg: Message) -> list[tuple[str, str]]:
    """(address, action) for each address flufl.bounce finds: "failed" for its permanent
    failures, "delayed" for its temporary ones (warnings, which the listener skips).
    `msg` must be the caller's own parse: its From:, X-Mailer and X-Failed-Recipients fields
    are rewritten."""
    if not from_a_mailer(msg):
        return []
    # One failing detector stops flufl.bounce 6.0's whole scan, and some fail on odd headers:
    # Sina calls .lower() on From:, which is a Header object when it holds 8-bit bytes, and
    # Yale indexes From:'s address list, which may be empty. The fields its detectors read
    # are handed over as plain text, and an unreadable From: as an address no detector knows.
    for name in ("from", "x-mailer", "x-failed-recipients"):
        values = [text(v) for v in msg.get_all(name, [])]
        if name == "from" and not getaddresses(values[:1]):
            values = ["unknown@invalid"]
        del msg[name]
        for value in values:
            msg[name] = value
    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # a detector's bug on odd input: no bounce recognised, never a crash
        return []
    found = [(a, "failed") for a in sorted(permanent)] + [(a, "delayed") for a in sorted(temporary - permanent)]
    # A truncated header can make a detector return b"": not an address.
    return [(a.decode("ascii", "replace").strip(), action) for a, action in found if a.strip()]


def status_near(body: str, address: str) -> str | None:
    """The first enhanced status code within STATUS_WINDOW characters after the address's first
    mention in the notification text, else None (classify_bounce then says Undetermined)."""
    at = body.lower().find(address.lower())
    if at < 0:
        return None
    m = _ENHANCED_IN_TEXT.search(body, at + len(address), at + len(address) + STATUS_WINDOW)
    return m.group(0) if m else None


_KEYWORD = re.compile(r"[A-Za-z][A-Za-z-]*")
_VACATION_SUBJECT = re.compile(
    r"\s*(?:auto(?:matic)?[ -]?(?:reply|response|answer)|autoreply|auto:|out of (?:the )?office|vacation"
    r"|away from (?:the|my) office|abwesenheit|automatische antwort|r[ée]ponse automatique|absence)",
    re.IGNORECASE)


def _subject(msg: Message) -> str:
    raw = text(msg.get("subject", ""))
    try:
        return str(make_header(decode_header(raw)))  # RFC 2047 encoded words
    except (ValueError, LookupError, UnicodeError):
        return raw


def _auto_submitted(msg: Message) -> str:
    """The Auto-Submitted keyword, lower case, or "" (RFC 3834 §5: "Auto-Submitted:" [CFWS]
    keyword [CFWS] *(";" parameter), where a comment may follow the keyword)."""
    keyword = _KEYWORD.search(text(msg.get("auto-submitted", "")))
    return keyword.group(0).lower() if keyword else ""


def auto_reply(msg: Message) -> str | None:
    """Why the message is an auto-reply, or None: RFC 3834 Auto-Submitted other than "no",
    the X-Autoreply / X-Autorespond headers, Precedence: auto_reply, or a vacation subject."""
    auto = _auto_submitted(msg)
    if auto not in ("", "no"):
        return f"Auto-Submitted: {auto}"
    for name in ("x-autoreply", "x-autorespond"):
        if msg.get(name) is not None:
            return f"{name} header"
    if text(msg.get("precedence", "")).lower() == "auto_reply":
        return "Precedence: auto_reply"
    if _VACATION_SUBJECT.match(_subject(msg)):
        return "vacation subject"
    return None
