# RFC 6152 §3 downgrade: make a message with 8-bit bodies 7-bit for an upstream that did
# not offer 8BITMIME, by re-encoding only the 8-bit leaf parts as quoted-printable. Works on
# the raw bytes: boundaries, preambles, other parts and every other header stay byte-identical.
from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from email.message import Message
from itertools import pairwise


class DowngradeError(Exception):
    """The message cannot be made 7-bit without changing its meaning; str() says why."""


_EIGHT = re.compile(rb"[\x80-\xff]")
_LINE = re.compile(rb"[^\n]*\n|[^\n]+")  # one line with its terminator, or an unterminated last line
_BLANK = re.compile(rb"\A\r?\n|\n\r?\n")  # the blank line that ends a header block
_FIELD = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")  # RFC 5322 §3.6.8 field name, obs WSP before ":"
# message/* types that may take a quoted-printable encoding: RFC 6532 §3.5, RFC 6533 §6.
# Every other message/* type must stay 7bit/8bit/binary (RFC 2046 §5.2).
_ENCODABLE_MESSAGES = frozenset({
    "message/global", "message/global-headers", "message/global-delivery-status",
    "message/global-disposition-notification",
})


def needs_8bitmime(raw: bytes) -> bool:
    """True when the body has a byte >= 0x80 (RFC 6152: BODY=8BITMIME)."""
    return _EIGHT.search(raw, _body_start(raw)) is not None


def needs_smtputf8(raw: bytes) -> bool:
    """True when the header block has a byte >= 0x80 (RFC 6531/6532 internationalized headers)."""
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
    m = _BLANK.search(raw)
    return m.end() if m else len(raw)


@dataclass(frozen=True, kw_only=True)
class _Field:
    name: str  # lowercased
    colon: int  # offset just after the ":"
    end: int  # offset after the terminator of the field's last line
    value: str  # unfolded, stripped
    eol: bytes  # terminator of the field's last line


@dataclass(frozen=True, kw_only=True)
class _Head:
    fields: tuple[_Field, ...]
    end: int  # where the blank line starts (new fields go here)
    body: int  # where the body starts
    eol: bytes  # the line ending new fields get

    def only(self, name: str, where: str) -> _Field | None:
        found = [f for f in self.fields if f.name == name]
        if len(found) > 1:
            raise DowngradeError(f"{where} has {len(found)} {name} fields, which is ambiguous")
        return found[0] if found else None


def _parse_head(data: bytes, where: str) -> _Head:
    fields: list[_Field] = []
    start: tuple[str, int] | None = None  # (name, offset after ":") of the field being read
    last_end, last_eol = 0, b"\r\n"

    def close() -> None:
        if start is not None:
            raw = data[start[1]:last_end]
            value = re.sub(rb"\r?\n", b"", raw).decode("ascii", "replace").strip()
            fields.append(_Field(name=start[0], colon=start[1], end=last_end, value=value, eol=last_eol))

    for m in _LINE.finditer(data):
        content, eol = _strip_eol(m.group())
        if not content:
            close()
            return _Head(fields=tuple(fields), end=m.start(), body=m.end(), eol=eol or last_eol)
        if content[:1] in (b" ", b"\t"):  # RFC 5322 §2.2.3 folded continuation
            if start is None:
                raise DowngradeError(f"the header of {where} starts with a continuation line")
        else:
            fm = _FIELD.match(content)
            if fm is None:
                raise DowngradeError(f"the header of {where} has a line that is not a field: "
                                     f"{content[:40]!r}")
            close()
            name = fm.group().rstrip(b" \t:").decode("ascii").lower()
            start = (name, m.start() + fm.end())
        last_end, last_eol = m.end(), eol or last_eol
    close()
    return _Head(fields=tuple(fields), end=len(data), body=len(data), eol=last_eol)


def _entity(data: bytes, *, default_type: str, path: str, where: str, message: bool) -> bytes:
    """One MIME entity (a whole message when `message`), converted; unchanged if 7-bit.

    `path` numbers the parts the IMAP way ("2.1" is the first part inside part 2) for
    error messages; `where` is the entity's own description.
    """
    if not _EIGHT.search(data):
        return data
    head = _parse_head(data, where)
    if _EIGHT.search(data, 0, head.body):
        raise DowngradeError(f"the header of {where} has 8-bit bytes; only SMTPUTF8 can carry it")
    ctype_field = head.only("content-type", where)
    cte_field = head.only("content-transfer-encoding", where)
    ctype, boundary = _content_type(ctype_field.value if ctype_field else None, default_type)
    cte = _cte(cte_field.value) if cte_field else "7bit"  # RFC 2045 §6.1 default
    body = data[head.body:]

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
        new_body = _qp(body, head.eol)
        new_cte = "quoted-printable"

    out = bytearray(data[:head.end])
    if new_cte is not None and cte_field is not None:
        out[cte_field.colon:cte_field.end] = b" " + new_cte.encode("ascii") + cte_field.eol
    if message and not any(f.name == "mime-version" for f in head.fields):
        # RFC 2045 §4: without MIME-Version a Content-Transfer-Encoding field means nothing.
        out += b"MIME-Version: 1.0" + head.eol
    if new_cte is not None and cte_field is None:
        out += b"Content-Transfer-Encoding: " + new_cte.encode("ascii") + head.eol
    out += data[head.end:head.body]
    out += new_body
    return bytes(out)


def _multipart(body: bytes, *, ctype: str, boundary: str | None, path: str, where: str) -> bytes:
    """RFC 2046 §5.1.1: preamble, delimiter, part, ..., close delimiter, epilogue."""
    if not boundary:
        raise DowngradeError(f"{where} is {ctype} without a boundary parameter")
    try:
        dash = b"--" + boundary.encode("ascii")
    except UnicodeEncodeError:
        raise DowngradeError(f"{where} has a boundary that is not ASCII") from None
    marks: list[tuple[int, int]] = []  # (start, end) of each delimiter line
    closed = False
    for m in _LINE.finditer(body):
        content, _ = _strip_eol(m.group())
        if not content.startswith(dash):
            continue
        rest = content[len(dash):]
        # RFC 2046 §5.1.1: "--" boundary, "--" if closing, then only white space. A longer
        # line is content, as the email package reads it: a nested multipart's boundary
        # may begin with this one's ("b" and "b2").
        if re.fullmatch(rb"(?:--)?[ \t]*", rest) is None:
            continue
        marks.append((m.start(), m.end()))
        if rest.startswith(b"--"):
            closed = True
            break
    if not marks:
        raise DowngradeError(f"{where} is {ctype} but its boundary never occurs")
    if not closed:
        raise DowngradeError(f"{where} is {ctype} without a closing boundary")
    if _EIGHT.search(body, 0, marks[0][0]) or _EIGHT.search(body, marks[-1][1]):
        raise DowngradeError(f"the preamble or epilogue of {where} has 8-bit bytes, which no "
                             "encoding can cover")

    child_type = "message/rfc822" if ctype == "multipart/digest" else "text/plain"  # RFC 2046 §5.1.5
    prefix = f"{path}." if path else ""
    out = bytearray(body[:marks[0][1]])
    for n, ((_, a_end), (b_start, b_end)) in enumerate(pairwise(marks), start=1):
        region = body[a_end:b_start]
        # The line break before a delimiter belongs to the delimiter, not to the part.
        content, tail = _strip_eol(region)
        out += _entity(content, default_type=child_type, path=f"{prefix}{n}", where=f"part {prefix}{n}",
                       message=False)
        out += tail + body[b_start:b_end]
    out += body[marks[-1][1]:]
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


def _strip_eol(line: bytes) -> tuple[bytes, bytes]:
    if line.endswith(b"\r\n"):
        return line[:-2], b"\r\n"
    if line.endswith(b"\n"):
        return line[:-1], b"\n"
    return line, b""


def _qp(body: bytes, eol: bytes) -> bytes:
    """Quoted-printable (RFC 2045 §6.7) keeping each line's own ending as a hard line break."""
    out = bytearray()
    for m in _LINE.finditer(body):
        content, line_eol = _strip_eol(m.group())
        out += _qp_line(content, line_eol or eol) + line_eol
    return bytes(out)


def _qp_line(content: bytes, soft_eol: bytes) -> bytes:
    # binascii does RFC 2045 §6.7 in C: "=", controls (a bare CR too) and 8-bit bytes as =XX,
    # trailing white space encoded (rule 3), lines of at most 76 characters (rule 5). The
    # content has no line break, so the only "\n" in its output ends a soft line break.
    return binascii.b2a_qp(content, quotetabs=False, istext=False, header=False).replace(
        b"=\n", b"=" + soft_eol)
