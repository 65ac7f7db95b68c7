# RFC 6152 §3 downgrade: make a message with 8-bit bodies 7-bit for an upstream that did
# not offer 8BITMIME, by re-encoding only the 8-bit leaf parts as quoted-printable. Works on
# the raw bytes: boundaries, preambles, other parts and every other header stay byte-identical.
from __future__ import annotations

import binascii
import re
from email.message import Message

from .mime import (
    LINE_RE,
    Field,
    Header,
    delimiters,
    parts,
    read_header,
    splice_transfer_encoding,
    split_header,
    strip_eol,
)


class DowngradeError(Exception):
    """The message cannot be made 7-bit without changing its meaning; str() says why."""


_EIGHT = re.compile(rb"[\x80-\xff]")
# message/* types that may take a quoted-printable encoding: RFC 6532 §3.5, RFC 6533 §6.
# Every other message/* type must stay 7bit/8bit/binary (RFC 2046 §5.2).
_ENCODABLE_MESSAGES = frozenset({
    "message/global", "message/global-headers", "message/global-delivery-status",
    "message/global-disposition-notification",
})


def needs_8bitmime(raw: bytes) -> bool:
    """True when the body has a byte >= 0x80 (RFC 6152: BODY=8BITMIME)."""
    if raw.isascii():  # most mail; bytes.isascii is ~20x faster than the regex (once per copy)
        return False
    return _EIGHT.search(raw, _body_start(raw)) is not None


def needs_smtputf8(raw: bytes) -> bool:
    """True when the header block has a byte >= 0x80 (RFC 6531/6532 internationalized headers)."""
    if raw.isascii():
        return False
    return _EIGHT.search(raw, 0, _body_start(raw)) is not None


def to_7bit(raw: bytes) -> bytes:
    """The message with every 8-bit leaf part quoted-printable encoded; raises DowngradeError.

    A message without 8-bit bytes is returned as is (the same object).
    """
    if needs_smtputf8(raw):
        raise DowngradeError("the message header has 8-bit bytes, which need SMTPUTF8 (RFC 6531), "
                             "not a 7-bit downgrade")
    if not needs_8bitmime(raw):
        return raw
    return _entity(raw, default_type="text/plain", path="", where="the message", message=True)


def _body_start(raw: bytes) -> int:
    return split_header(raw, 0, len(raw))[1]


def _read_head(data: bytes, where: str) -> Header:
    head = read_header(data, 0, len(data))
    if head.bad_line is not None:
        if head.bad_line[:1] in (b" ", b"\t"):
            raise DowngradeError(f"the header of {where} starts with a continuation line")
        raise DowngradeError(f"the header of {where} has a line that is not a field: {head.bad_line[:40]!r}")
    return head


def _only(head: Header, name: str, where: str) -> Field | None:
    found = head.named(name.encode("ascii"))
    if len(found) > 1:
        raise DowngradeError(f"{where} has {len(found)} {name} fields, which is ambiguous")
    return found[0] if found else None


def _value(data: bytes, field: Field) -> str:
    """The field's value, unfolded and stripped."""
    return re.sub(rb"\r?\n", b"", data[field.colon : field.end]).decode("ascii", "replace").strip()


def _entity(data: bytes, *, default_type: str, path: str, where: str, message: bool) -> bytes:
    """One MIME entity (a whole message when `message`), converted; unchanged if 7-bit.

    `path` numbers the parts the IMAP way ("2.1" is the first part inside part 2) for
    error messages; `where` is the entity's own description.
    """
    if not _EIGHT.search(data):
        return data
    head = _read_head(data, where)
    if _EIGHT.search(data, 0, head.body):
        raise DowngradeError(f"the header of {where} has 8-bit bytes; only SMTPUTF8 can carry it")
    ctype_field = _only(head, "content-type", where)
    cte_field = _only(head, "content-transfer-encoding", where)
    ctype, boundary = _content_type(_value(data, ctype_field) if ctype_field else None, default_type)
    cte = _cte(_value(data, cte_field)) if cte_field else "7bit"  # RFC 2045 §6.1 default
    body = data[head.body:]
    eol = head.blank or head.last_eol or b"\r\n"  # the line ending new lines get

    new_cte: str | None
    if ctype.startswith("multipart/") or ctype == "message/rfc822":
        # RFC 2045 §6.4 / RFC 2046 §5.2.1: composites are 7bit, 8bit or binary, never encoded;
        # their 8-bit content is converted inside them, then "8bit" becomes "7bit".
        if cte not in ("7bit", "8bit"):
            raise DowngradeError(f"{where} is {ctype} with a {cte} transfer encoding and 8-bit content")
        if ctype == "message/rfc822":
            new_body = _entity(body, default_type="text/plain", path=path,
                               where=f"the message attached as {where}", message=True)
        else:
            new_body = _multipart(body, ctype=ctype, boundary=boundary, path=path, where=where)
        new_cte = "7bit" if cte == "8bit" else None
    elif ctype.startswith("message/") and ctype not in _ENCODABLE_MESSAGES:
        raise DowngradeError(f"{where} is {ctype}, which has 8-bit content but may not be "
                             "re-encoded (RFC 2046 §5.2)")
    elif cte == "binary":
        raise DowngradeError(f"{where} has a binary transfer encoding (RFC 3030); it cannot be "
                             "sent without BINARYMIME")
    elif cte not in ("7bit", "8bit"):
        raise DowngradeError(f"{where} is {cte}-encoded but has raw 8-bit bytes")
    else:
        new_body = _qp(body, eol)
        new_cte = "quoted-printable"

    # RFC 2045 §4: without MIME-Version a Content-Transfer-Encoding field means nothing. The
    # old field's comments may name the old encoding, so all of its value is replaced.
    at, new_head = splice_transfer_encoding(
        data, head, None if new_cte is None else new_cte.encode("ascii"),
        eol=eol,
        mime_version=message and not head.named(b"mime-version"), keep_layout=False)
    return data[:at] + new_head + new_body


def _multipart(body: bytes, *, ctype: str, boundary: str | None, path: str, where: str) -> bytes:
    """RFC 2046 §5.1.1: preamble, delimiter, part, ..., close delimiter, epilogue."""
    if not boundary:
        raise DowngradeError(f"{where} is {ctype} without a boundary parameter")
    try:
        token = boundary.encode("ascii")
    except UnicodeEncodeError:
        raise DowngradeError(f"{where} has a boundary that is not ASCII") from None
    marks = delimiters(body, 0, len(body), token)
    if not marks:
        raise DowngradeError(f"{where} is {ctype} but its boundary never occurs")
    if not marks[-1].close:
        raise DowngradeError(f"{where} is {ctype} without a closing boundary")
    if _EIGHT.search(body, 0, marks[0].start) or _EIGHT.search(body, marks[-1].end):
        raise DowngradeError(f"the preamble or epilogue of {where} has 8-bit bytes, which no "
                             "encoding can cover")

    child_type = "message/rfc822" if ctype == "multipart/digest" else "text/plain"  # RFC 2046 §5.1.5
    prefix = f"{path}." if path else ""
    out = bytearray(body[:marks[0].end])
    for n, (start, end) in enumerate(parts(body, marks), start=1):
        # The line break before a delimiter belongs to the delimiter, not to the part.
        out += _entity(body[start:end], default_type=child_type, path=f"{prefix}{n}", where=f"part {prefix}{n}",
                       message=False)
        out += body[end:marks[n].end]
    out += body[marks[-1].end:]
    return bytes(out)


def _content_type(value: str | None, default: str) -> tuple[str, str | None]:
    if value is None:
        return default, None
    # The email package only parses the value here; nothing is re-serialized.
    msg = Message()
    msg["Content-Type"] = value
    return msg.get_content_type(), msg.get_boundary()  # RFC 2045 §5.2: invalid -> text/plain


def _cte(value: str) -> str:
    return re.sub(r"\([^)]*\)", "", value).strip().lower() or "7bit"  # drop RFC 5322 comments


def _qp(body: bytes, eol: bytes) -> bytes:
    """Quoted-printable (RFC 2045 §6.7) keeping each line's own ending as a hard line break."""
    out = bytearray()
    for m in LINE_RE.finditer(body):
        content, line_eol = strip_eol(m.group())
        out += _qp_line(content, line_eol or eol) + line_eol
    return bytes(out)


def _qp_line(content: bytes, soft_eol: bytes) -> bytes:
    # binascii does RFC 2045 §6.7 in C: "=", controls (a bare CR too) and 8-bit bytes as =XX,
    # trailing white space encoded (rule 3), lines of at most 76 characters (rule 5). The
    # content has no line break, so the only "\n" in its output ends a soft line break.
    return binascii.b2a_qp(content, quotetabs=False, istext=False, header=False).replace(
        b"=\n", b"=" + soft_eol)
