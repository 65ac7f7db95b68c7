# MIME structure over raw message bytes, shared by relay.instrument and relay.downgrade:
# where a header block ends, its fields (RFC 5322 §2.2), the delimiter lines of a multipart
# body (RFC 2046 §5.1.1), and the splice that sets a Content-Transfer-Encoding (RFC 2045 §6).
# Offsets only, no policy: each caller decides what is malformed and how to say so.
from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise

LINE_RE = re.compile(rb"[^\n]*\n|[^\n]+")  # one line with its terminator, or an unterminated last line
_HEADER_END_RE = re.compile(rb"\n\r?\n")
# RFC 5322 §3.6.8 field name, then the colon; obsolete syntax (§4.5) allows white space before it.
_FIELD_RE = re.compile(rb"([\x21-\x39\x3b-\x7e]+)([ \t]*):")
_DELIMITER_TAIL_RE = re.compile(rb"(--)?[ \t]*(?:\r?\n|\Z)")
_FOLDING_WS = b" \t\r\n"


def split_header(raw: bytes, start: int, end: int) -> tuple[int, int]:
    """(header_end, body_start) of the entity raw[start:end].

    raw[start:header_end] is the header block, raw[header_end:body_start] the blank line
    after it. Without a blank line everything is header: (end, end).
    """
    if raw.startswith(b"\n", start, end) or raw.startswith(b"\r\n", start, end):
        # No header fields at all (allowed for a body part, RFC 2046 §5.1.1).
        return start, min(start + (1 if raw.startswith(b"\n", start, end) else 2), end)
    match = _HEADER_END_RE.search(raw, start, end)
    return (match.start() + 1, match.end()) if match else (end, end)


def strip_eol(line: bytes) -> tuple[bytes, bytes]:
    """A line split into its content and its terminator (CRLF, LF or none)."""
    if line.endswith(b"\r\n"):
        return line[:-2], b"\r\n"
    if line.endswith(b"\n"):
        return line[:-1], b"\n"
    return line, b""


def before_eol(raw: bytes, pos: int) -> int:
    """pos, moved back over the line break that ends just before it, if any."""
    if raw[pos - 2 : pos] == b"\r\n":
        return pos - 2
    if raw[pos - 1 : pos] == b"\n":
        return pos - 1
    return pos


def eol_of(raw: bytes, start: int, end: int) -> bytes:
    """The terminator of the first line in raw[start:end], b"" if it has no line break."""
    newline = raw.find(b"\n", start, end)
    if newline < 0:
        return b""
    return b"\r\n" if newline > start and raw[newline - 1] == 0x0D else b"\n"


# --- header fields ---------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    name: bytes  # lowercased, without the colon or white space before it
    spaced: bool  # white space between the name and the colon (RFC 5322 §4.5 obsolete syntax)
    colon: int  # offset just after the ":"
    end: int  # offset after the terminator of the field's last line
    eol: bytes  # terminator of the field's last line, b"" if unterminated

    def value_span(self, raw: bytes) -> tuple[int, int]:
        """The value without the white space (and folds) around it; empty just after the colon."""
        last = self.end
        while last > self.colon and raw[last - 1] in _FOLDING_WS:
            last -= 1
        first = self.colon
        while first < last and raw[first] in _FOLDING_WS:
            first += 1
        return first, last


@dataclass(frozen=True)
class Header:
    """The header block raw[start:end] and the blank line raw[end:body] after it."""

    fields: tuple[Field, ...]  # the fields before the first malformed line
    end: int  # where the blank line starts (new fields go here); the entity's end if none
    body: int  # where the body starts
    last_eol: bytes  # terminator of the last terminated header line, b"" if none
    blank: bytes  # the blank line (its terminator), b"" when there is none
    bad_line: bytes | None  # the first line that is neither a field nor a fold of one (no terminator)
    bare_cr: bool  # a CR that does not end a line, before bad_line

    def named(self, name: bytes) -> list[Field]:
        return [field for field in self.fields if field.name == name]


def read_header(raw: bytes, start: int, end: int) -> Header:
    """The header block of the entity raw[start:end], read line by line up to the first bad line."""
    header_end, body = split_header(raw, start, end)
    fields: list[Field] = []
    current: tuple[bytes, bool, int] | None = None  # (name, spaced, colon) of the field being read
    field_end, field_eol, last_eol = 0, b"", b""
    bad_line: bytes | None = None
    bare_cr = False
    for match in LINE_RE.finditer(raw, start, header_end):
        content, eol = strip_eol(match[0])
        if content[:1] in (b" ", b"\t"):  # RFC 5322 §2.2.3 folding
            if current is None:
                bad_line = content
                break
        elif (field := _FIELD_RE.match(content)) is not None:
            if current is not None:
                fields.append(Field(current[0], current[1], current[2], field_end, field_eol))
            current = (field[1].lower(), bool(field[2]), match.start() + field.end())
        else:
            bad_line = content
            break
        bare_cr = bare_cr or b"\r" in content
        field_end, field_eol, last_eol = match.end(), eol, eol or last_eol
    if current is not None:
        fields.append(Field(current[0], current[1], current[2], field_end, field_eol))
    return Header(tuple(fields), header_end, body, last_eol, raw[header_end:body], bad_line, bare_cr)


def splice_transfer_encoding(
    raw: bytes, header: Header, value: bytes | None, *, eol: bytes, mime_version: bool, keep_layout: bool
) -> tuple[int, bytes]:
    """Set Content-Transfer-Encoding `value` in `header` (at most one such field; None: leave it).

    Returns (at, head): raw[at:header.body] becomes `head` and nothing before `at` changes.
    New fields go before the blank line, ended by `eol`; `mime_version` adds
    "MIME-Version: 1.0" there too (RFC 2045 §4: a Content-Transfer-Encoding means nothing
    without it). An existing field keeps its white space and line folding around the new
    value when `keep_layout`; otherwise everything after its colon becomes " value" + eol.
    """
    added = b"MIME-Version: 1.0" + eol if mime_version else b""
    rest = raw[header.end : header.body]
    found = header.named(b"content-transfer-encoding")
    if value is not None and found:
        field = found[0]
        if keep_layout:
            first, last = field.value_span(raw)
            # An empty value ("Content-Transfer-Encoding:") gets the usual space first.
            new = value if last > first else b" " + value
            return first, new + raw[last : header.end] + added + rest
        return field.colon, b" " + value + (field.eol or eol) + raw[field.end : header.end] + added + rest
    if value is not None:
        added += b"Content-Transfer-Encoding: " + value + eol
    return header.end, added + rest


# --- multipart bodies ------------------------------------------------------------


@dataclass(frozen=True)
class Delimiter:
    start: int  # the start of the delimiter line
    end: int  # after its line break
    close: bool  # "--boundary--": the rest is the epilogue


def delimiters(raw: bytes, start: int, end: int, token: bytes) -> list[Delimiter]:
    """The delimiter lines of the multipart body raw[start:end] up to the first close delimiter.

    A delimiter line is "--" + boundary (+ "--" for the last) and optional transport padding
    (RFC 2046 §5.1.1); a longer line such as "--boundaryX" is content, as the email package
    reads it (a nested multipart's boundary may begin with this one's).
    """
    needle = b"--" + token
    found_lines: list[Delimiter] = []
    position = start
    while (found := raw.find(needle, position, end)) >= 0:
        position = found + 1
        if found != start and raw[found - 1] != 0x0A:
            continue  # not at the start of a line
        tail = _DELIMITER_TAIL_RE.match(raw, found + len(needle), end)
        if tail is None:
            continue
        found_lines.append(Delimiter(found, tail.end(), tail[1] is not None))
        if tail[1]:
            break
        position = tail.end()
    return found_lines


def parts(raw: bytes, marks: list[Delimiter]) -> list[tuple[int, int]]:
    """Byte ranges of the body parts between delimiter lines; the line break before a
    delimiter belongs to the delimiter, not to the part."""
    return [(before.end, max(before.end, before_eol(raw, after.start))) for before, after in pairwise(marks)]
