# Locate, in decoded HTML text, what instrumentation edits: <a>/<area> start tags
# with the exact offsets of their attributes, the last </body>, and {{ses:openTracker}}
# placeholders. The stdlib parser only finds tags (comments, <script>, <style> and
# Outlook conditional comments stay opaque); nothing is ever re-serialized.
from __future__ import annotations

import bisect
import html
import html.entities
import html.parser
import re
from dataclasses import dataclass


class HtmlError(ValueError):
    """The HTML could not be scanned safely."""


@dataclass(frozen=True)
class Attribute:
    name: str  # lowercased, as the HTML tokenizer sees it
    value: str | None  # character references decoded once; None for a bare attribute
    lead: int  # start of the whitespace before the name: removal starts here
    start: int  # offset of the name
    end: int  # offset just past the value (or the name)
    value_start: int  # the raw value, quotes included (== end when there is none)
    quote: str  # '"', "'" or "" (unquoted or bare)


@dataclass(frozen=True)
class Anchor:
    tag: str  # "a" or "area"
    attributes: tuple[Attribute, ...]

    def first(self, name: str) -> Attribute | None:
        # HTML keeps the first of duplicated attributes (WHATWG tokenizer).
        return next((attribute for attribute in self.attributes if attribute.name == name), None)


@dataclass(frozen=True)
class HtmlScan:
    anchors: tuple[Anchor, ...]
    body_end: int | None  # offset of the last </body> end tag
    placeholders: tuple[tuple[int, int], ...]  # {{ses:openTracker}} spans outside comments


PLACEHOLDER_RE = re.compile(r"\{\{\s*ses:openTracker\s*\}\}")

# Attributes inside a start tag, per the WHATWG tokenizer: separators are ASCII
# whitespace and '/', a name runs to whitespace, '/', '>' or '=', and a value is
# double-quoted, single-quoted or runs to whitespace or '>'.
_WS = "\t\n\f\r "
_TAG_NAME_RE = re.compile(r"<[^\t\n\f\r />]*")
_ATTRIBUTE_RE = re.compile(
    r"""(?P<sep>[\t\n\f\r /]*)
        (?P<name>[^\t\n\f\r />][^\t\n\f\r />=]*)
        (?:[\t\n\f\r ]*=[\t\n\f\r ]*(?P<value>"[^"]*"|'[^']*'|[^\t\n\f\r >]*))?""",
    re.VERBOSE,
)


def scan(text: str) -> HtmlScan:
    """Find anchors, the last </body> and placeholders in one HTML document."""
    collector = _Collector(text)
    try:
        collector.feed(text)
        collector.close()
    except HtmlError:
        raise
    except Exception as exc:  # noqa: BLE001 - html.parser raises AssertionError & co. on odd markup
        raise HtmlError(f"HTML parser failed ({type(exc).__name__})") from exc
    anchors = tuple(_anchor(tag, start, end, text) for tag, start, end in collector.anchors)
    comment_starts = [start for start, _ in collector.comments]
    placeholders = []
    for match in PLACEHOLDER_RE.finditer(text):
        # Comments come in document order and do not nest: only the last one that
        # starts before the placeholder can contain it.
        index = bisect.bisect_right(comment_starts, match.start()) - 1
        if index < 0 or collector.comments[index][1] < match.end():
            placeholders.append((match.start(), match.end()))
    return HtmlScan(anchors, collector.body_end, tuple(placeholders))


def _anchor(tag: str, start: int, end: int, text: str) -> Anchor:
    name = _TAG_NAME_RE.match(text, start)
    assert name is not None  # the parser reported a start tag here
    attributes = []
    pos = name.end()
    while (match := _ATTRIBUTE_RE.match(text, pos, end)) is not None:
        raw = match["value"]
        quote = raw[0] if raw and raw[0] in "\"'" else ""
        value = None if raw is None else unescape_attribute(raw[1:-1] if quote else raw)
        sep = match["sep"]
        lead = match.start("name") - (len(sep) - len(sep.rstrip(_WS)))
        attributes.append(
            Attribute(
                name=match["name"].lower(),
                value=value,
                lead=lead,
                start=match.start("name"),
                end=match.end(),
                value_start=match.start("value") if raw is not None else match.end(),
                quote=quote,
            )
        )
        pos = match.end()
    return Anchor(tag, tuple(attributes))


class _Collector(html.parser.HTMLParser):
    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[tuple[str, int, int]] = []  # tag, start, end of the start tag
        self.comments: list[tuple[int, int]] = []
        self.body_end: int | None = None
        # getpos() reports (line, column) counting "\n" only; map back to offsets.
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self._text = text

    def _offset(self) -> int:
        line, column = self.getpos()
        return self._line_starts[line - 1] + column

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("a", "area"):
            start = self._offset()
            raw = self.get_starttag_text() or ""
            if not self._text.startswith(raw, start):
                raise HtmlError("HTML parser lost its position")
            self.anchors.append((tag, start, start + len(raw)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)  # <a .../>: no end tag to report

    def handle_endtag(self, tag: str) -> None:
        if tag == "body":
            self.body_end = self._offset()

    def handle_comment(self, data: str) -> None:
        start = self._offset() + len("<!--")
        self.comments.append((start, start + len(data)))


# HTML5 named character references; keys ending in ';' need it, the legacy ones
# (e.g. "amp", "copy") also match without.
_ENTITIES = html.entities.html5
_CHARREF_RE = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[A-Za-z][A-Za-z0-9]*;?)")


def unescape_attribute(raw: str) -> str:
    """Decode character references in an attribute value exactly as a browser does.

    Unlike html.unescape, a legacy reference without ';' that is followed by '=' or an
    alphanumeric stays literal inside attributes (WHATWG "named character reference
    state"), so `?a=1&copy=2` keeps its `&copy=2` while `?a=1&amp;b=2` becomes `&b=2`.
    """
    if "&" not in raw:
        return raw
    return _CHARREF_RE.sub(lambda match: _decode_reference(match, raw), raw)


def _decode_reference(match: re.Match[str], raw: str) -> str:
    ref = match[1]
    if ref.startswith("#"):
        return html.unescape(match[0])
    if ref in _ENTITIES and ref.endswith(";"):
        return _ENTITIES[ref]
    name = ref.rstrip(";")
    if name in _ENTITIES and not ref.endswith(";"):
        following = raw[match.end() : match.end() + 1]
        if following == "=" or (following.isascii() and following.isalnum()):
            return match[0]
        return _ENTITIES[name]
    return match[0]  # unknown name, or a legacy prefix followed by alphanumerics: literal
