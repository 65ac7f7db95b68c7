# Envelope address checks (pure): what aiosmtpd's parser lets through but an
# upstream would refuse, so it is refused at MAIL/RCPT instead of queued and bounced.
from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # C0 controls and DEL, quoted or not (RFC 5321 §4.1.2)
MAX_PATH = 256 - 2  # RFC 5321 §4.5.3.1.3: the path, "<" and ">" included, is at most 256 octets
MAX_DOMAIN = 255  # §4.5.3.1.2
MAX_LOCAL_PART = 64  # §4.5.3.1.1

# The common path "<local@domain>" with dot-atoms only (RFC 5322 §3.2.3), optionally
# followed by one space and the parameters: what email's full parser (~80 µs a call in
# aiosmtpd's _getaddr, twice per message) returns for it is the text itself.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_SIMPLE_PATH = re.compile(rf"<({_DOT_ATOM}@{_DOT_ATOM})>(?: ([^\s(].*))?", re.ASCII | re.DOTALL)


def problem(address: str, *, recipient: bool) -> str | None:
    """Why an envelope address (aiosmtpd's addr-spec, "<>" for the null path) is refused, or None.

    Senders may have local parts over 64 octets: SRS and VERP return paths often do and
    Postfix accepts them; recipients' servers enforce the limit, so RCPT does too.
    """
    if address == "<>":
        return "the null path is only a sender" if recipient else None
    if _CONTROL.search(address):
        return "control character"
    try:
        raw = address.encode("utf-8")  # aiosmtpd keeps undecodable bytes as surrogates
    except UnicodeEncodeError:
        return "not UTF-8"
    local, at, domain = raw.rpartition(b"@")
    if not at or not local or not domain:
        return "no domain"
    if len(raw) > MAX_PATH or len(domain) > MAX_DOMAIN:
        return "too long"
    if recipient and len(local) > MAX_LOCAL_PART:
        return "local part over 64 octets"
    return None


def simple_path(arg: str) -> tuple[str, str] | None:
    """(address, parameters) of a MAIL/RCPT argument in the common form, else None
    (the caller then uses the full parser)."""
    m = _SIMPLE_PATH.fullmatch(arg)
    if m is None:
        return None
    return m.group(1), m.group(2) or ""
