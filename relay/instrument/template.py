# A decoded part as text pieces with holes for one recipient's URLs. prepare() turns
# the located edits into a template once; render() only joins pieces and URLs, so
# per-recipient work is string concatenation plus re-encoding.
from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import quote


@dataclass(frozen=True)
class Slot:
    """A hole: link `index` (or the pixel when index is None) written in `style`."""

    index: int | None
    # '"' or "'": inside an HTML attribute with that quote; "unquoted": an unquoted HTML
    # attribute value, which stays unquoted unless the URL needs quotes; "text": plain
    # text, written verbatim;
    # "pixel": the whole pixel <img> (nothing at all without an open URL).
    style: str


PIXEL_SLOT = Slot(None, "pixel")


@dataclass(frozen=True)
class Edit:
    start: int
    end: int
    slot: Slot | None  # None deletes the span


@dataclass(frozen=True)
class Template:
    pieces: tuple[str, ...]  # len(pieces) == len(slots) + 1
    slots: tuple[Slot, ...]

    def fill(self, open_url: str | None, click_urls: Sequence[str]) -> str:
        return self.join(self.write(open_url, click_urls))

    def write(self, open_url: str | None, click_urls: Sequence[str]) -> list[str]:
        """What goes into each hole, in order: printable ASCII, or "" for no pixel."""
        return [
            write_url(click_urls[slot.index], slot.style)
            if slot.index is not None
            else ("" if open_url is None else pixel(open_url))
            for slot in self.slots
        ]

    def join(self, written: Sequence[str]) -> str:
        out = [self.pieces[0]]
        for text, piece in zip(written, self.pieces[1:], strict=True):
            out.append(text)
            out.append(piece)
        return "".join(out)


def iter_lines(template: Template, separator: str) -> Iterator[str | Template]:
    """The template's lines (without separators), one at a time: plain text, or a
    Template with holes."""
    current: list[str | Slot] = []
    for piece, slot in zip(template.pieces, (*template.slots, None), strict=True):
        head = True  # the piece's first line continues the current one
        for lines in _blocks_of_lines(piece, separator):
            for line in lines:
                if head:
                    current.append(line)
                    head = False
                else:
                    yield _line(current)
                    current = [line]
        if slot is not None:
            current.append(slot)
    yield _line(current)


def _blocks_of_lines(piece: str, separator: str, block: int = 1 << 16) -> Iterator[list[str]]:
    """piece.split(separator) a block at a time: a 12 MB piece split whole is a list of
    every line at once (twice its size)."""
    pos = 0
    while (cut := piece.find(separator, pos + block)) >= 0:
        yield piece[pos:cut].split(separator)
        pos = cut + len(separator)
    yield (piece[pos:] if pos else piece).split(separator)


def _line(items: list[str | Slot]) -> str | Template:
    pieces: list[str] = []
    slots: list[Slot] = []
    current: list[str] = []
    for item in items:
        if isinstance(item, Slot):
            pieces.append("".join(current))
            slots.append(item)
            current = []
        else:
            current.append(item)
    pieces.append("".join(current))
    return Template(tuple(pieces), tuple(slots)) if slots else pieces[0]


def build(text: str, edits: Sequence[Edit]) -> Template:
    """Cut `text` at the edits; an edit overlapping an earlier one is dropped."""
    pieces: list[str] = []
    slots: list[Slot] = []
    current: list[str] = []
    pos = 0
    for edit in sorted(edits, key=lambda edit: (edit.start, edit.end)):
        if edit.start < pos:
            continue
        current.append(text[pos : edit.start])
        if edit.slot is not None:
            pieces.append("".join(current))
            slots.append(edit.slot)
            current = []
        pos = edit.end
    current.append(text[pos:])
    pieces.append("".join(current))
    return Template(tuple(pieces), tuple(slots))


def pixel(url: str) -> str:
    # 1x1 with no border, empty alt and no line box of its own: a blocked image shows no
    # broken-image icon and adds no gap or scrollbar (postmangovsg #2241, freescout #499).
    # Not display:none, which Gmail's proxy does not fetch.
    return (
        f'<img src="{_escape(_ascii(url), chr(34))}" width="1" height="1" alt="" border="0" '
        'style="height:1px!important;width:1px!important;border:0!important;margin:0!important;'
        'padding:0!important;display:block;overflow:hidden" />'
    )


def write_url(url: str, style: str) -> str:
    url = _ascii(url)
    if style == "text":
        return url
    if style == "unquoted":
        # Keep the author's style: an unquoted value may hold anything but ASCII
        # whitespace, quotes, '=', '<', '>' and '`' (HTML §13.1.2.3); else double quotes.
        escaped = _escape(url, '"')
        return escaped if _UNQUOTED_SAFE_RE.fullmatch(escaped) else f'"{escaped}"'
    return _escape(url, style)


def _escape(url: str, quote_char: str) -> str:
    # Tracking URLs are [A-Za-z0-9_-./:], so this is almost always a no-op.
    url = url.replace("&", "&amp;")
    return url.replace(quote_char, "&quot;" if quote_char == '"' else "&#39;")


_UNQUOTED_SAFE_RE = re.compile(r"[^\t\n\f\r \"'=<>`]+")
_PRINTABLE_RE = re.compile(r"[\x21-\x7e]*")
_PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))


def _ascii(url: str) -> str:
    # Keep every inserted URL printable ASCII so that it encodes in any charset
    # (RFC 3987 §3.1 maps an IRI to a URI by percent-encoding its UTF-8).
    return url if _PRINTABLE_RE.fullmatch(url) else quote(url, safe=_PRINTABLE)
