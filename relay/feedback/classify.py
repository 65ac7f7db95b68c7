# SES bounceType / bounceSubType for one recipient of an inbound bounce, from its RFC 3464
# Status and Diagnostic-Code (ses-events.md §3.4). Pure; reuses relay.retry's reading of
# RFC 3463 enhanced codes and its "no such mailbox" / "mailbox full" wordings.
from __future__ import annotations

import re

from relay.retry import _MAILBOX_FULL, _NO_MAILBOX, _found_status, bounce_subtype

UNDETERMINED = ("Undetermined", "Undetermined")

# RFC 3463 §2: class.subject.detail, as a whole Status value (comments after it allowed).
_STATUS = re.compile(r"\s*([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
# RFC 3464 §2.3.6: Diagnostic-Code is "diagnostic-type; text"; for type smtp the text is the
# reply, e.g. "550 5.1.1 <x@y>: Recipient address rejected" or Gmail's "550-5.1.1 The email ...".
_DIAGNOSTIC = re.compile(r"\s*(?:[A-Za-z][\w-]*\s*;)?\s*(.*)", re.DOTALL)
_REPLY_CODE = re.compile(r"([245])\d\d(?=[ -]|$)")

# RFC 3463 subject.detail codes SES reports with its own subtypes.
_NO_EMAIL = {"1.1", "1.2", "1.3", "1.10"}  # bad mailbox, bad system, bad syntax, null MX (RFC 7505)
_TOO_LARGE = {"3.4", "2.3"}  # message too big for system; message length exceeds administrative limit
_ATTACHMENT = re.compile(r"attachment|file ?type|file (?:name )?extension", re.IGNORECASE)
_CONTENT = re.compile(r"spam|content|policy|phish|virus|malware|blocklist|blacklist", re.IGNORECASE)
_TOO_LARGE_WORDS = re.compile(r"too (?:large|big)|size (?:limit|exceeds)|exceeds? (?:the )?(?:maximum |max )?size",
                              re.IGNORECASE)


def _reply_text(diagnostic_code: str | None) -> str:
    """The reply part of a Diagnostic-Code: "smtp; 550 5.1.1 x" -> "550 5.1.1 x"."""
    if not diagnostic_code:
        return ""
    m = _DIAGNOSTIC.match(diagnostic_code)
    return m.group(1).strip() if m else ""


def classify_bounce(status: str | None, diagnostic_code: str | None) -> tuple[str, str]:
    """SES (bounceType, bounceSubType) for one DSN recipient.

    Decisions (SES's table, ses-events.md §3.4, followed over the status class):
    - MailboxFull (X.2.2, "mailbox full"/"over quota"), MessageTooLarge (X.3.4, X.2.3, a 552 or
      "too large" wording without a code), ContentRejected (X.6.x; X.7.x with spam/content/policy
      wording) and AttachmentRejected (attachment/file type wording) are always Transient, as SES
      lists them, even from a 5.x.x status (5.2.2 -> ("Transient", "MailboxFull")).
    - NoEmail (X.1.1, X.1.2, X.1.3, X.1.10, or "user unknown"/"no such user" wording when no more
      specific code says otherwise) is Permanent, but only from a 5.x.x status: a 4.1.1 is the
      remote side asking to try again, so it stays ("Transient", "General").
    - Otherwise 5.x.x -> ("Permanent", "General"), 4.x.x -> ("Transient", "General"); a 2.x.x
      (delivered) or no readable class at all -> ("Undetermined", "Undetermined").
    - The Status field gives the class; when its subject.detail says nothing (X.0.0, as Exim
      always writes "5.0.0") or it is missing, the enhanced code in the diagnostic's reply is used
      (Exim: Status 5.0.0, Diagnostic-Code "smtp; 550 5.1.1 ..." -> NoEmail).
    """
    reply = _reply_text(diagnostic_code)
    in_reply = _found_status(reply)  # relay.retry: enhanced code after an optional reply code
    code_match = _REPLY_CODE.match(reply)
    klass: str | None = None
    sd = ""
    if status and (m := _STATUS.match(status)):
        klass, sd = m.group(1), f"{m.group(2)}.{m.group(3)}"
    if in_reply is not None:
        if klass is None:
            klass = in_reply[0]
        if sd in ("", "0.0") and in_reply[0] == klass:
            sd = f"{in_reply[1]}.{in_reply[2]}"
    if klass is None and code_match is not None:
        klass = code_match.group(1)  # RFC 5321 §4.2.1: the reply code's first digit
    if klass not in ("4", "5"):
        return UNDETERMINED
    kind = "Permanent" if klass == "5" else "Transient"
    generic = sd in ("", "0.0", "1.0", "2.0", "3.0")

    if sd in _NO_EMAIL:
        return ("Permanent", "NoEmail") if klass == "5" else ("Transient", "General")
    if sd == "2.2" or (generic and _MAILBOX_FULL.search(reply)):
        return ("Transient", "MailboxFull")
    if sd in _TOO_LARGE or (generic and _TOO_LARGE_WORDS.search(reply)):
        return ("Transient", "MessageTooLarge")
    if _ATTACHMENT.search(reply):
        return ("Transient", "AttachmentRejected")
    if sd.startswith("6.") or (sd.startswith("7.") and _CONTENT.search(reply)):
        return ("Transient", "ContentRejected")
    if generic and klass == "5":
        if _NO_MAILBOX.search(reply):
            return ("Permanent", "NoEmail")
        if not sd and code_match is not None:
            # Only a reply code and text: relay.retry's reading of an upstream's own reply
            # (552 without a code is RFC 5321's "too much mail data").
            subtype = bounce_subtype(int(reply[:3]), reply[4:])
            if subtype == "MessageTooLarge":
                return ("Transient", subtype)
            return ("Permanent", subtype)
    return (kind, "General")
