# Walk a MIME message over its raw bytes (RFC 2045/2046), so every byte we do not
# rewrite is copied verbatim; decode a leaf body to text and re-encode edited text
# with the part's own charset and Content-Transfer-Encoding.
from __future__ import annotations

import base64
import binascii
import codecs
import re
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

from ..mime import delimiters, eol_of, parts, split_header


class MimeError(ValueError):
    """The message structure or a part's encoding cannot be handled faithfully."""


@dataclass(frozen=True)
class Leaf:
    """A non-multipart part: where its body sits in the raw message and how it is encoded."""

    content_type: str  # lowercased "type/subtype" (RFC 2045 default text/plain)
    charset: str | None  # lowercased charset parameter, if any
    transfer_encoding: str  # lowercased Content-Transfer-Encoding, "7bit" by default
    attachment: bool  # Content-Disposition: attachment
    opaque: bool  # inside or equal to something relay must not touch (signed, encrypted, message/*)
    header_start: int  # the part's header block is raw[header_start:body_start]
    body_start: int
    body_end: int
    eol: bytes  # the line ending used in this body (for re-encoding)


# Signed or encrypted content must stay byte-identical (any change breaks the
# signature, RFC 1847 / RFC 8551); attached messages are someone else's mail.
_OPAQUE_MULTIPARTS = frozenset({"multipart/signed", "multipart/encrypted"})
_OPAQUE_LEAVES = frozenset({"application/pkcs7-mime", "application/x-pkcs7-mime"})
_MAX_DEPTH = 40


def walk(raw: bytes) -> list[Leaf]:
    """Every leaf of the message in document order; opaque subtrees are one leaf."""
    leaves: list[Leaf] = []
    _walk_entity(raw, 0, len(raw), out=leaves, default_type="text/plain", eol=eol_of(raw, 0, len(raw)), depth=0)
    return leaves


def _walk_entity(
    raw: bytes, start: int, end: int, *, out: list[Leaf], default_type: str, eol: bytes, depth: int
) -> None:
    if depth > _MAX_DEPTH:
        raise MimeError("MIME nesting too deep")
    headers, body_start = _split_headers(raw, start, end)
    headers.set_default_type(default_type)
    content_type = headers.get_content_type()
    eol = eol_of(raw, body_start, end) or eol
    if content_type.startswith("multipart/") and content_type not in _OPAQUE_MULTIPARTS:
        boundary = headers.get_boundary()
        if not boundary:
            raise MimeError(f"{content_type} without a boundary")
        # RFC 2046 §5.1.5: the parts of multipart/digest default to message/rfc822.
        child_type = "message/rfc822" if content_type == "multipart/digest" else "text/plain"
        for part_start, part_end in _split_multipart(raw, body_start, end, boundary):
            _walk_entity(raw, part_start, part_end, out=out, default_type=child_type, eol=eol, depth=depth + 1)
        return
    opaque = content_type in _OPAQUE_MULTIPARTS or content_type in _OPAQUE_LEAVES or content_type.startswith("message/")
    cte = str(headers.get("content-transfer-encoding", "7bit")).split("(")[0].strip().lower() or "7bit"
    charset = headers.get_content_charset()
    out.append(
        Leaf(
            content_type=content_type,
            charset=charset,
            transfer_encoding=cte,
            attachment=headers.get_content_disposition() == "attachment",
            opaque=opaque,
            header_start=start,
            body_start=body_start,
            body_end=end,
            eol=eol,
        )
    )


def _split_headers(raw: bytes, start: int, end: int) -> tuple[Message, int]:
    """Parse the header block of the entity raw[start:end]; return it and where the body starts."""
    header_end, body_start = split_header(raw, start, end)
    if header_end == start < body_start:
        return Message(), body_start  # no headers at all (RFC 2046 §5.1.1): all defaults
    parser = BytesHeaderParser(policy=compat32)
    return parser.parsebytes(raw[start:header_end]), body_start


def _split_multipart(raw: bytes, start: int, end: int, boundary: str) -> list[tuple[int, int]]:
    """Byte ranges of the body parts between the delimiter lines (RFC 2046 §5.1.1)."""
    try:
        token = boundary.encode("ascii")
    except UnicodeEncodeError:
        raise MimeError("non-ASCII multipart boundary") from None
    marks = delimiters(raw, start, end, token)
    if not marks:
        raise MimeError("multipart boundary not found")
    if marks[0].close:
        raise MimeError("multipart closes before its first part")
    if not marks[-1].close:
        raise MimeError("missing closing multipart boundary")
    return parts(raw, marks)


# --- bodies: transfer encoding + charset -----------------------------------------

_TRANSFER_ENCODINGS = frozenset({"7bit", "8bit", "binary", "quoted-printable", "base64"})


def decode_body(leaf: Leaf, body: bytes | memoryview) -> tuple[str, str]:
    """The body as text and the codec name to re-encode it with.

    Fails unless re-encoding the unchanged text gives back exactly the decoded bytes,
    which guarantees that every untouched character survives instrumentation.
    `body` may be a view into the message: a 7bit/8bit body is then decoded in place.
    """
    if leaf.transfer_encoding not in _TRANSFER_ENCODINGS:
        raise MimeError(f"unsupported Content-Transfer-Encoding {leaf.transfer_encoding!r}")
    octets = _decode_transfer(leaf.transfer_encoding, body)
    candidates = [leaf.charset] if leaf.charset else ["us-ascii", "utf-8"]
    for charset in candidates:
        try:
            text = str(octets, charset)
            if _round_trips(charset) or text.encode(charset) == octets:
                return text, charset
        except LookupError:
            raise MimeError(f"unknown charset {leaf.charset!r}") from None
        except (UnicodeError, ValueError):
            continue
    if leaf.charset:
        raise MimeError(f"body is not valid {leaf.charset}")
    # RFC 2045 §5.2 says us-ascii when undeclared; UTF-8 is the common reality.
    raise MimeError("undeclared charset and the body is not UTF-8")


def encode_body(text: str, charset: str, leaf: Leaf, trailer: bytes) -> bytes:
    """Encode edited text back with the part's charset and transfer encoding.

    `trailer` is trailing_whitespace() of the original body: base64 output ends with
    it, so the line structure before the next boundary stays as it was.
    """
    octets = text.encode(charset)
    eol = leaf.eol or b"\r\n"
    if leaf.transfer_encoding == "quoted-printable":
        return encode_quoted_printable(octets, eol)
    if leaf.transfer_encoding == "base64":
        lines = base64.encodebytes(octets).rstrip(b"\n").split(b"\n")  # 76-char lines, RFC 2045 §6.8
        return eol.join(lines) + trailer
    # 7bit/8bit/binary: relay only inserts ASCII, so 7bit stays 7bit. Lines that grow
    # past MAX_LINE are the caller's to check (exceeds_line_limit).
    return octets


def encodes_by_line(text: str, charset: str, eol: bytes) -> bool:
    """Whether encoding `text` line by line gives exactly its encoding as a whole.

    True for ASCII-compatible charsets (and for ISO-2022-JP, which returns to ASCII
    before every line break): then a quoted-printable part can be re-encoded one
    line at a time, and lines that hold no tracking URL are encoded once, in prepare.
    """
    try:
        if _round_trips(charset):
            # Stateless and ASCII-compatible: true whenever the text encodes at all, and
            # that is checked a slice at a time instead of by encoding it whole twice.
            step = 1 << 20
            for i in range(0, len(text), step):
                text[i : i + step].encode(charset)
            return True
        separator = eol.decode("ascii")
        whole = text.encode(charset)
        return eol.join(line.encode(charset) for line in text.split(separator)) == whole
    except UnicodeError:
        return False


# RFC 5322 §2.1.1 and RFC 5321 §4.5.3.1.6: a line is at most 998 octets plus CRLF.
MAX_LINE = 998


def exceeds_line_limit(data: bytes, eol: bytes) -> bool:
    """Whether a line of `data` (split at the part's own line break) is over MAX_LINE.

    Splitting at `eol` only errs on the safe side: a stray CR or LF inside a line
    counts as one more octet of that line.
    """
    return len(data) > MAX_LINE and max(map(len, data.split(eol or b"\r\n"))) > MAX_LINE


def trailing_whitespace(body: bytes) -> bytes:
    return body[len(body.rstrip(b" \t\r\n")) :]


# Codecs whose strict decoding is undone exactly by encoding, whatever the bytes: their
# round trip is not checked (for a 25 MB body that check is one more copy of it).
_ROUND_TRIP_CODECS = frozenset({"utf-8", "ascii", "iso8859-1"})


def _round_trips(charset: str) -> bool:
    try:
        return codecs.lookup(charset).name in _ROUND_TRIP_CODECS
    except LookupError:
        return False  # the decoding has already said so


def _decode_transfer(cte: str, body: bytes | memoryview) -> bytes | memoryview:
    if cte == "quoted-printable":
        return binascii.a2b_qp(body)
    if cte == "base64":
        compact = bytes(body).translate(None, b" \t\r\n")  # one copy, not a piece per line
        # Strict RFC 4648 alphabet and padding, whole quads only. (A fullmatch of
        # "(?:[A-Za-z0-9+/]{4})*…" did the same but kept backtracking state per quad:
        # 1.2 GB to check a 32 MB body.)
        if len(compact) % 4:
            raise MimeError("invalid base64 body")
        try:
            return binascii.a2b_base64(compact, strict_mode=True)
        except binascii.Error:
            raise MimeError("invalid base64 body") from None
    return body


# Quoted-printable (RFC 2045 §6.7): printable ASCII but '=' stays literal, and so do
# space and tab unless they end a line; every encoded line is at most 76 characters,
# with '=' soft line breaks that never split an =XX escape.
_QP_UNSAFE_RE = re.compile(rb"[^\x21-\x3c\x3e-\x7e \t]")
_QP_ESCAPES = [b"=%02X" % byte for byte in range(256)]
_QP_MAX_LINE = 76


def encode_quoted_printable(data: bytes, eol: bytes) -> bytes:
    return eol.join(encode_quoted_printable_line(line, eol) for line in data.split(eol))


def encode_quoted_printable_line(line: bytes, eol: bytes) -> bytes:
    """One hard line (without its line break), soft-broken with `eol` to legal length."""
    return quoted_printable_wrap(quoted_printable_escape(line), eol)


def quoted_printable_escape(data: bytes) -> bytes:
    """The escapes alone: byte by byte, so escaping pieces and joining them is the same
    as escaping the whole (what lets a template line be escaped once, its holes per copy)."""
    # Line breaks other than the part's own (a bare CR or LF) are data: escaped too.
    return _QP_UNSAFE_RE.sub(lambda match: _QP_ESCAPES[match[0][0]], data)


def quoted_printable_wrap(encoded: bytes, eol: bytes) -> bytes:
    """An escaped hard line, its trailing white space escaped and soft-broken to length."""
    if encoded[-1:] in (b" ", b"\t"):  # trailing whitespace would be stripped in transit
        encoded = encoded[:-1] + _QP_ESCAPES[encoded[-1]]
    end = len(encoded)
    if end <= _QP_MAX_LINE:
        return encoded
    out = []
    start = 0
    while end - start > _QP_MAX_LINE:  # by index: no copy of the rest per soft break
        cut = start + _QP_MAX_LINE - 1
        if encoded[cut - 1] == 0x3D:
            cut -= 1
        elif encoded[cut - 2] == 0x3D:
            cut -= 2
        out.append(encoded[start:cut])
        start = cut
    out.append(encoded[start:])
    return (b"=" + eol).join(out)
