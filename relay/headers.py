# The top-level header block of a submitted message, read tolerantly over its raw
# bytes: where it ends, and its fields with byte spans (so callers splice, not
# re-serialize). Unlike relay.mime.read_header, which stops at the first malformed
# line because MIME edits must be exact, this skips junk lines and reads on: intake
# must still find X-SES-* headers and events must still list what was submitted.
from __future__ import annotations

import re
from dataclasses import dataclass

# A header field line: name ':' (RFC 5322 §2.2, and §4.5.3's obsolete white space
# before the colon); continuation lines start with WSP.
_FIELD_RE = re.compile(rb"^([!-9;-~]+)[ \t]*:")


@dataclass(frozen=True, kw_only=True)
class HeaderField:
    name: str
    value: str  # unfolded, as text (undecodable bytes replaced)
    start: int  # byte span of the whole field, continuation lines included
    end: int


def split_header_block(data: bytes) -> tuple[bytes, int]:
    """Return the header block (without the empty line) and where the body starts (RFC 5322 §2.1)."""
    m = re.search(rb"(?:^|\n)(\r?\n)", data)
    if m is None:
        return data, len(data)
    return data[: m.start(1)], m.end(1)


def header_fields(block: bytes) -> list[HeaderField]:
    """The header fields of a block, with byte spans; lines that are not fields are skipped."""
    fields: list[HeaderField] = []
    pos = 0
    lines = block.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        line = lines[i]
        start = pos
        pos += len(line)
        i += 1
        m = _FIELD_RE.match(line)
        if not m:
            continue
        raw = line[m.end():]
        while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
            raw += lines[i]
            pos += len(lines[i])
            i += 1
        value = re.sub(r"\r?\n(?=[ \t])", "", raw.decode("utf-8", "replace")).strip()
        fields.append(HeaderField(name=m.group(1).decode("ascii"), value=value, start=start, end=pos))
    return fields


_TRACE = ("received", "return-path")  # RFC 5322 §3.6.7: trace fields stay on top


def add_header(data: bytes, name: str, value: str, *, unless_present: bool = False) -> bytes:
    """`data` with the field `name: value` spliced in after the leading trace fields (so
    relay's Received: stays first), in the message's own line ending; the rest of the
    bytes untouched. `unless_present`: keep a field of that name the mailer wrote."""
    block, _ = split_header_block(data)
    fields = header_fields(block)
    if unless_present and any(f.name.lower() == name.lower() for f in fields):
        return data
    at = 0
    for f in fields:
        if f.name.lower() not in _TRACE or f.start != at:
            break
        at = f.end
    eol = b"\n" if b"\n" in block and b"\r\n" not in block else b"\r\n"
    return b"".join((data[:at], f"{name}: {value}".encode("utf-8"), eol, data[at:]))
