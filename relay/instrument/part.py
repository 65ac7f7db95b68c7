# An edited body part: its text template and how one recipient's copy of it is encoded
# back (charset, Content-Transfer-Encoding, cached lines), including the switch of a
# 7bit/8bit part to quoted-printable when a copy would break the 998-octet line limit.
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property

from .headers import set_transfer_encoding
from .mime import (
    MAX_LINE,
    Leaf,
    encode_body,
    encode_quoted_printable_line,
    encodes_by_line,
    exceeds_line_limit,
    quoted_printable_escape,
    quoted_printable_wrap,
)
from .template import Template, iter_lines, pixel, write_url

_IDENTITY = ("7bit", "8bit")  # "binary" (RFC 3030 BINARYMIME) has no line limit


@dataclass(frozen=True)
class Part:
    """An edited leaf: its template and how to encode it back."""

    leaf: Leaf
    charset: str
    trailer: bytes  # what followed the encoded body text (kept for base64)
    template: Template
    # Quoted-printable encodes line by line: when the charset allows it, the lines
    # without holes are encoded once (bytes) and only lines with URLs per recipient.
    lines: tuple[bytes | QuotedLine | Template, ...] | None = None
    # 7bit/8bit: the way out to quoted-printable for a copy whose lines grow too long.
    recode: Recode | None = None

    @property
    def start(self) -> int:
        """Where this part's output begins in the raw message (the bytes before are copied)."""
        return self.recode.start if self.recode is not None else self.leaf.body_start

    def render(self, open_url: str | None, click_urls: Sequence[str]) -> bytes:
        if self.recode is not None:
            return self._render_within_limit(self.recode, open_url, click_urls)
        if self.lines is None:
            filled = self.template.fill(open_url, click_urls)
            return encode_body(filled, self.charset, self.leaf, self.trailer)
        eol = self.leaf.eol
        out = []
        for line in self.lines:
            if line.__class__ is bytes:
                out.append(line)
            elif line.__class__ is QuotedLine:
                out.append(line.render(open_url, click_urls, eol))  # type: ignore[union-attr]
            else:
                assert isinstance(line, Template)
                out.append(encode_quoted_printable_line(line.fill(open_url, click_urls).encode(self.charset), eol))
        return eol.join(out)

    def _render_within_limit(self, recode: Recode, open_url: str | None, click_urls: Sequence[str]) -> bytes:
        if recode.always:
            return recode.qp_head + self._quoted_printable.render(open_url, click_urls)
        written = self.template.write(open_url, click_urls)
        body = encode_body(self.template.join(written), self.charset, self.leaf, self.trailer)
        # Decided per copy, with its real URLs: a click token embeds the original URL, so
        # no length known in prepare() bounds it. Inserted text is ASCII: one octet a char.
        if recode.growing is None:
            too_long = exceeds_line_limit(body, self.leaf.eol)
        else:
            too_long = any(octets + sum(map(len, written[a:b])) > MAX_LINE for octets, a, b in recode.growing)
        if too_long:
            return recode.qp_head + self._quoted_printable.render(open_url, click_urls)
        return recode.head + body

    @cached_property
    def _quoted_printable(self) -> Part:
        """This 7bit/8bit part as quoted-printable: built for the first copy that needs it."""
        assert self.recode is not None
        # The part's own line ending for hard and soft breaks (b"" only for a body without any).
        leaf = replace(self.leaf, transfer_encoding="quoted-printable", eol=self.leaf.eol or b"\r\n")
        lines = _quoted_printable_lines(leaf, self.charset, self.template) if self.recode.by_line else None
        return Part(leaf, self.charset, self.trailer, self.template, lines)


@dataclass(frozen=True)
class Recode:
    """How a 7bit/8bit part goes out as quoted-printable when a line is over 998 octets.

    Tracking URLs and the pixel lengthen lines, and RFC 5322 §2.1.1 / RFC 5321
    §4.5.3.1.6 cap a line at 998 octets (MTAs reject or break longer ones). Such a copy
    of the part goes out quoted-printable (RFC 2045 §6.7: short lines, same charset and
    line ending) and its Content-Transfer-Encoding says so: the header changes with
    the body, never one without the other.
    """

    start: int  # the first header byte that changes; the part's output starts here
    head: bytes  # raw[start:body_start], for copies that keep the part's encoding
    qp_head: bytes  # the same bytes with Content-Transfer-Encoding: quoted-printable
    by_line: bool  # the charset allows quoted-printable line by line (encodes_by_line)
    always: bool  # a line is too long whatever fills its holes: every copy is recoded
    # Per line with holes: its octets without them and its slots (a range of indexes),
    # so a copy is measured from the lengths of its URLs alone. None: measure the copy.
    growing: tuple[tuple[int, int, int], ...] | None


def part(raw: bytes, leaf: Leaf, charset: str, trailer: bytes, text: str, template: Template) -> Part:
    """How to render the edited `text` (cut into `template`) of `leaf` in raw."""
    if leaf.transfer_encoding not in ("quoted-printable", *_IDENTITY):
        return Part(leaf, charset, trailer, template)
    by_line = bool(template.slots and leaf.eol) and encodes_by_line(text, charset, leaf.eol)
    if leaf.transfer_encoding in _IDENTITY:
        return Part(leaf, charset, trailer, template, recode=_recode(raw, leaf, charset, template, by_line))
    return Part(leaf, charset, trailer, template, _quoted_printable_lines(leaf, charset, template) if by_line else None)


@dataclass(frozen=True)
class QuotedLine:
    """A quoted-printable line with holes, its text encoded and escaped once: a copy
    escapes only what fills the holes, then soft-breaks the line (RFC 2045 §6.7)."""

    template: Template
    pieces: tuple[bytes, ...]  # template.pieces, encoded in the part's charset and escaped

    @cached_property
    def _holes(self) -> tuple[tuple[int | None, str, bytes], ...]:
        """(link index or None for the pixel, style, the escaped text after the hole)."""
        return tuple((slot.index, slot.style, piece)
                     for slot, piece in zip(self.template.slots, self.pieces[1:], strict=True))

    def render(self, open_url: str | None, click_urls: Sequence[str], eol: bytes) -> bytes:
        # The hot loop of a copy (one call per line with a URL): Template.write inlined.
        # What fills a hole is printable ASCII (template._ascii), the same octets in every
        # charset this class is used for; only its '=' needs escaping (RFC 2045 §6.7).
        out = [self.pieces[0]]
        for index, style, piece in self._holes:
            if index is not None:
                text = write_url(click_urls[index], style)
            else:
                text = "" if open_url is None else pixel(open_url)
            written = text.encode("ascii")
            out.append(written.replace(b"=", b"=3D") if b"=" in written else written)
            out.append(piece)
        return quoted_printable_wrap(b"".join(out), eol)


# Charsets whose encoding of a string is the concatenation of its pieces' encodings (no
# shift state, unlike ISO-2022-JP): only their lines are escaped ahead of time.
_STATELESS = re.compile(r"(utf-8|ascii|us-ascii|latin-1|iso-?8859-\d+|cp125\d|windows-125\d)", re.IGNORECASE)


def _quoted_printable_lines(leaf: Leaf, charset: str,
                            template: Template) -> tuple[bytes | QuotedLine | Template, ...]:
    lines: list[bytes | QuotedLine | Template] = []
    stateless = _STATELESS.fullmatch(charset) is not None
    static: list[bytes] = []  # consecutive lines without holes, joined into one item
    for line in iter_lines(template, leaf.eol.decode("ascii")):
        if isinstance(line, str):
            static.append(encode_quoted_printable_line(line.encode(charset), leaf.eol))
            continue
        if static:
            lines.append(leaf.eol.join(static))
            static = []
        if stateless:
            lines.append(QuotedLine(line, tuple(quoted_printable_escape(p.encode(charset)) for p in line.pieces)))
        else:
            lines.append(line)
    if static:
        lines.append(leaf.eol.join(static))
    return tuple(lines)


def _recode(raw: bytes, leaf: Leaf, charset: str, template: Template, by_line: bool) -> Recode | None:
    splice = set_transfer_encoding(raw, leaf.header_start, leaf.body_start, b"quoted-printable")
    if splice is None:
        return None  # a header block too irregular to edit safely: the part goes out as before
    start, qp_head = splice
    head = raw[start : leaf.body_start]
    if not leaf.eol or _ASCII_PROBE.encode(charset, "replace") != _ASCII_PROBE.encode("ascii"):
        return Recode(start, head, qp_head, by_line, always=False, growing=None)
    longest, growing, slot = 0, [], 0
    for line in iter_lines(template, leaf.eol.decode("ascii")):
        # Piece by piece, a stateful charset (ISO-2022-JP) counts its escapes once per
        # piece: never fewer octets than the copy has.
        if isinstance(line, str):
            longest = max(longest, len(line.encode(charset)))
            continue
        octets = sum(len(piece.encode(charset)) for piece in line.pieces)
        longest = max(longest, octets)
        growing.append((octets, slot, slot + len(line.slots)))
        slot += len(line.slots)
    return Recode(start, head, qp_head, by_line, always=longest > MAX_LINE, growing=tuple(growing))


# Charsets in which every inserted (printable ASCII) character and the line ending are
# one octet each, as in ASCII: then a line's length is additive over its pieces.
_ASCII_PROBE = "".join(chr(c) for c in range(0x20, 0x7F)) + "\r\n"
