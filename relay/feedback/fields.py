# Header fields of inbound reports as bounded text: a report's field blocks (RFC 3464 §2,
# RFC 5965 §3), a returned original's header (RFC 3462 §1), and the values inside them
# (addresses with their type, RFC 5322 dates). Pure.
from __future__ import annotations

import re
from datetime import datetime, timezone
from email.message import Message
from email.parser import BytesParser, HeaderParser
from email.policy import compat32
from email.utils import parsedate_to_datetime

MAX_VALUE_CHARS = 2048  # one header or report field value
MAX_FIELDS = 256  # fields kept from one header block
MAX_BLOCKS = 1001  # field blocks read from one report part: a per-message block and 1,000 recipients

Fields = list[tuple[str, str]]

_FOLD = re.compile(r"\r?\n[ \t]+")
_BLANK_LINE = re.compile(r"\r?\n[ \t]*\r?\n")


def decoded(raw: bytes) -> str:
    """8-bit header bytes: UTF-8 (RFC 6532) when they are, else Latin-1, which keeps every byte
    (a "müller" address from a legacy MTA stays readable instead of becoming U+FFFD)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def text(value: object) -> str:
    """A field value as one line of text: folding collapsed to one space, 8-bit bytes (kept by
    the parser as surrogates) decoded, NULs dropped, capped at MAX_VALUE_CHARS."""
    s = value if isinstance(value, str) else str(value)
    s = decoded(s.encode("utf-8", "surrogateescape"))
    s = _FOLD.sub(" ", s).replace("\r", "").replace("\n", " ").replace("\x00", "")
    return s.strip()[:MAX_VALUE_CHARS]


def fields(block: Message) -> Fields:
    """A header block's (name, value) pairs as written (raw_items: no RFC 2047 decoding)."""
    return [(text(name), text(value)) for name, value in list(block.raw_items())[:MAX_FIELDS]]


def first(block: Fields, name: str) -> str | None:
    """The first non-empty value of the field `name` (lower case)."""
    for k, v in block:
        if k.lower() == name and v:
            return v
    return None


def every(block: Fields, name: str) -> list[str]:
    return [v for k, v in block if k.lower() == name and v]


def address(value: str | None) -> str | None:
    """RFC 3464 §2.3.2 "address-type; address" (rfc822, utf-8), or a bare one, without <>."""
    if not value:
        return None
    if ";" in value:
        value = value.split(";", 1)[1]
    value = value.strip().strip("<>").strip()
    return value or None


def date(value: str | None) -> datetime | None:
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


def blocks(part: Message) -> list[Fields]:
    """The field blocks of a delivery-status or feedback-report part.

    The email package splits message/delivery-status into one sub-message per block; any other
    message/* type (message/global-delivery-status, RFC 6533; message/feedback-report) becomes one
    sub-message whose body holds the blocks after the first, which are split here."""
    # is_multipart() before get_payload(): without decode=True, a text payload is decoded with
    # the part's charset parameter, which raises ValueError when that name holds a NUL.
    if not part.is_multipart():
        raw = part.get_payload(decode=True)
        return _split(decoded(raw)) if isinstance(raw, bytes) else []
    payload = part.get_payload()
    found: list[Fields] = []
    for block in payload[:MAX_BLOCKS] if isinstance(payload, list) else []:
        if isinstance(block, Message):
            found.append(fields(block))
            # decode=True: the body's bytes as received (without it, 8-bit bytes become U+FFFD)
            rest = None if block.is_multipart() else block.get_payload(decode=True)
            if isinstance(rest, bytes) and rest.strip():
                found.extend(_split(decoded(rest)))
    return found[:MAX_BLOCKS]


def _split(body: str) -> list[Fields]:
    chunks = [c for c in _BLANK_LINE.split(body, maxsplit=MAX_BLOCKS) if c.strip()]
    return [fields(HeaderParser(policy=compat32).parsestr(c, headersonly=True)) for c in chunks[:MAX_BLOCKS]]


def original_headers(part: Message | None) -> tuple[tuple[str, str], ...]:
    """The returned original's header fields, from message/rfc822 (or message/global) or
    text/rfc822-headers (or message/global-headers)."""
    if part is None:
        return ()
    if part.is_multipart():
        inner = next((p for p in part.get_payload() if isinstance(p, Message)), None)
        return tuple(fields(inner)) if inner is not None else ()
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes):
        return ()
    return tuple(fields(BytesParser(policy=compat32).parsebytes(raw, headersonly=True)))
