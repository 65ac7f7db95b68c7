# Set a part's Content-Transfer-Encoding over the raw bytes of its header block: the
# value is spliced in place (or one field is added before the blank line), and every
# other byte of the block stays as it was (RFC 5322 §2.2, RFC 2045 §6).
from __future__ import annotations

import re
from dataclasses import dataclass

# A field starts with its name and a colon, with no white space before the colon: the
# form the email package reads as a header (which is how mime.walk() found the CTE).
_FIELD_RE = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")
_LINE_RE = re.compile(rb"[^\n]*\n|[^\n]+")
_FOLDING_WS = b" \t\r\n"


@dataclass(frozen=True)
class _Field:
    name: bytes  # lowercased
    value_start: int  # after the colon and the white space (and folds) that follow it
    value_end: int  # before trailing white space and the line break


def set_transfer_encoding(raw: bytes, start: int, body_start: int, value: bytes) -> tuple[int, bytes] | None:
    """Splice Content-Transfer-Encoding `value` into the header block raw[start:body_start].

    Returns (at, head): raw[at:body_start] becomes `head` and nothing before `at`
    changes. None when the block is not plain enough to edit without guessing (a line
    that is not a field, a bare CR, two CTE fields): the caller leaves the part as is.
    For a whole message (start 0) without MIME-Version, "MIME-Version: 1.0" is added as
    well: RFC 2045 §4 gives a Content-Transfer-Encoding no meaning without it.
    """
    block = _read_block(raw, start, body_start)
    if block is None:
        return None
    fields, end, eol = block
    found = [field for field in fields if field.name == b"content-transfer-encoding"]
    if len(found) > 1:
        return None  # ambiguous: readers disagree on which one counts
    added = b""
    if start == 0 and not any(field.name == b"mime-version" for field in fields):
        added += b"MIME-Version: 1.0" + eol
    if found:
        field = found[0]
        # An empty value ("Content-Transfer-Encoding:") gets the usual space first.
        new = value if field.value_end > field.value_start else b" " + value
        head = new + raw[field.value_end : end] + added + raw[end:body_start]
        return field.value_start, head
    added += b"Content-Transfer-Encoding: " + value + eol
    return end, added + raw[end:body_start]


def _read_block(raw: bytes, start: int, body_start: int) -> tuple[list[_Field], int, bytes] | None:
    """The fields, where the blank line starts and the line break new fields get."""
    fields: list[_Field] = []
    name: bytes | None = None  # the field being read
    value_start = field_end = 0
    eol = b""

    def close() -> None:
        if name is not None:
            last = field_end
            while last > value_start and raw[last - 1] in _FOLDING_WS:
                last -= 1
            first = value_start  # an empty value is the empty span just after the colon
            while first < last and raw[first] in _FOLDING_WS:
                first += 1
            fields.append(_Field(name, first, last))

    for match in _LINE_RE.finditer(raw, start, body_start):
        line = match[0]
        line_eol = b"\r\n" if line.endswith(b"\r\n") else b"\n" if line.endswith(b"\n") else b""
        content = line[: len(line) - len(line_eol)]
        if b"\r" in content:
            return None  # the email package breaks the line at a bare CR: no safe reading
        if not content:
            close()
            return fields, match.start(), eol or line_eol or b"\r\n"
        if content[:1] in (b" ", b"\t"):  # RFC 5322 §2.2.3 folding
            if name is None:
                return None
        else:
            field = _FIELD_RE.match(content)
            if field is None:
                return None
            close()
            name = field[0][:-1].lower()
            value_start = match.start() + field.end()
        field_end = match.end()
        eol = line_eol
    return None  # no blank line: the block runs to the end and there is no body
