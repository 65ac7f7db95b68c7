# Locate, in decoded HTML text, what instrumentation edits: <a>/<area> start tags with
# the exact offsets of their attributes, where the pixel goes, and {{ses:openTracker}}
# placeholders. A small tokenizer that follows the HTML standard's (§13.2.5) wherever
# that decides what is markup and what is text; nothing is ever re-serialized.
from __future__ import annotations

import html
import html.entities
import re
from dataclasses import dataclass


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
        # HTML keeps the first of duplicated attributes (HTML §13.2.5.33).
        return next((attribute for attribute in self.attributes if attribute.name == name), None)


@dataclass(frozen=True)
class HtmlScan:
    anchors: tuple[Anchor, ...]
    # Where the pixel goes without a placeholder: before the last </body> end tag, else
    # at the end of the document, moved out of Outlook conditional regions (see _Regions).
    pixel_at: int
    placeholders: tuple[tuple[int, int], ...]  # {{ses:openTracker}} spans in text content


PLACEHOLDER_RE = re.compile(r"\{\{\s*ses:openTracker\s*\}\}")

# Why not html.parser: in the Python versions relay supports its rules differ from the
# standard's (`-- >` ends a comment and `--!>` does not; <textarea> and <title> content is
# parsed as markup; an unclosed comment ends at the next '>'), they have been changing
# between patch releases, and it reports positions as (line, column) only.

_WS = "\t\n\f\r "  # ASCII whitespace; CR too, as input preprocessing (§13.2.3.5) makes it LF
_TAG_NAME_RE = re.compile(r"[^\t\n\f\r />]*")  # §13.2.5.8 tag name state
_SEPARATORS_RE = re.compile(r"[\t\n\f\r /]*")  # §13.2.5.32 before attribute name, §13.2.5.40
_ATTRIBUTE_NAME_RE = re.compile(r"[^\t\n\f\r />][^\t\n\f\r />=]*")  # §13.2.5.33 ('=' may start one)
_SPACES_RE = re.compile(r"[\t\n\f\r ]*")
_UNQUOTED_RE = re.compile(r"[^\t\n\f\r >]*")  # §13.2.5.38 attribute value (unquoted) state
# A whole start or end tag in one match, for the tags the scanner only has to step over:
# the same states as _tag/_attribute (§13.2.5.8-40), possessive so it takes exactly the
# loop's path; no match (EOF inside the tag, an '=' without its value) falls back to them.
_TAG_OVER_RE = re.compile(
    r"<(/?)([A-Za-z][^\t\n\f\r />]*+)"  # tag open, end tag open, tag name
    r"(?:[\t\n\f\r /]*+"  # before attribute name
    r"[^\t\n\f\r />][^\t\n\f\r />=]*+"  # attribute name
    r"(?:[\t\n\f\r ]*+=[\t\n\f\r ]*+(?:\"[^\"]*+\"|'[^']*+'|(?![\"'])[^\t\n\f\r >]*+)"  # = value
    r"|(?![\t\n\f\r ]*+=)))*+"  # or a bare attribute
    r"[\t\n\f\r /]*+>")
_COMMENT_END_RE = re.compile(r"--!?>")  # §13.2.5.51 comment end, §13.2.5.52 comment end bang

# Elements whose start tag switches the tokenizer out of the data state (§13.2.6.4.4 "in
# head", §13.2.6.4.7 "in body"): RCDATA (§13.2.5.2) for title and textarea, RAWTEXT
# (§13.2.5.3) for the others; script data (§13.2.5.4) and PLAINTEXT (§13.2.5.5) below.
# <noscript> is RAWTEXT only "if the scripting flag is enabled": mail clients run no
# scripts, so its content is rendered as markup and its links are tracked.
_RAW_TEXT = frozenset({"title", "textarea", "style", "xmp", "iframe", "noembed", "noframes"})
# The tree builder makes those switches only for HTML elements, not inside <svg> or <math>
# (foreign content, §13.2.6.5), which these start tags leave ("breakout"). Integration
# points (<foreignObject>, <mi>…) are not modelled: they do not occur in mail.
_FOREIGN = frozenset({"svg", "math"})
# Start tags the scanner acts on (anchors, foreign content, raw text); the rest it steps over.
_NOTABLE_START = frozenset({"a", "area", "plaintext", "script"}) | _RAW_TEXT | _FOREIGN
_BREAKOUT = frozenset(
    "b big blockquote body br center code dd div dl dt em embed h1 h2 h3 h4 h5 h6 head hr i img li listing "
    "menu meta nobr ol p pre ruby s small span strong strike sub sup table tt u ul var".split()
)

# Script data escaping (§13.2.5.15-31): inside <!-- … -->, a "<script" starts a nested
# script that needs its own "</script" before the outer one can end.
_SCRIPT_DATA_RE = re.compile(r"<!--|</script(?=[\t\n\f\r />])", re.IGNORECASE)
_SCRIPT_ESCAPED_RE = re.compile(r"-->|<(/?)script(?=[\t\n\f\r />])", re.IGNORECASE)

# Outlook conditional comments (Microsoft "downlevel-revealed" syntax): browsers render
# what lies between an opening `<!--[if !mso]><!-->`, `<!--[if !(gte mso 15)]-->` or
# `<![if !mso]>` and its closing `<!--<![endif]-->` / `<![endif]>`, but Outlook's Word
# engine evaluates the condition and may skip it. (A "downlevel-hidden" block,
# `<!--[if mso]> … <![endif]-->`, is one comment: no browser sees its content at all.)
_CONDITION_OPEN_RE = re.compile(r"\s*\[if\b[^\]]*\]", re.IGNORECASE)
_CONDITION_CLOSE_RE = re.compile(r"\[endif\]", re.IGNORECASE)


@dataclass(frozen=True)
class _Tag:
    name: str  # lowercased
    end: int  # just past its '>'
    attributes: tuple[Attribute, ...]
    self_closing: bool


def scan(text: str) -> HtmlScan:
    """Find anchors, the pixel's place and placeholders in one HTML document."""
    return _Scanner(text).run()


class _Scanner:
    def __init__(self, text: str, *, fast: bool = True) -> None:
        self.text = text
        self.fast = fast  # step over tags that change nothing with one regex (_TAG_OVER_RE)
        self.anchors: list[Anchor] = []
        self.placeholders: list[tuple[int, int]] = []  # in runs of character data (data state)
        self.body_end: int | None = None
        self.regions: list[int] = []  # starts of the open conditional regions, outermost first
        self.foreign = 0  # depth of <svg>/<math>

    def run(self) -> HtmlScan:
        text = self.text
        pos = run_start = 0
        unterminated = None  # start of what the end of the document cut short
        while (lt := text.find("<", pos)) >= 0:
            # §13.2.5.6 tag open state: the character after '<' decides.
            end = self._markup(lt)
            if end == lt:  # not markup: '<' is text
                pos = lt + 1
                continue
            self._text_run(run_start, lt)
            if end is None:  # EOF inside a tag, comment or raw-text element: no more markup
                unterminated = lt
                break
            pos = run_start = end
        else:
            self._text_run(run_start, len(text))
        if self.body_end is not None:
            pixel_at = self.body_end
        elif self.regions:
            pixel_at = self.regions[0]
        elif unterminated is not None:
            pixel_at = unterminated
        else:
            pixel_at = len(text.rstrip(_WS))
        return HtmlScan(tuple(self.anchors), pixel_at, tuple(self.placeholders))

    def _text_run(self, start: int, end: int) -> None:
        # Placeholders are looked for as each run ends: keeping every run for later cost
        # ~120 bytes a run (38 MB for a 12 MB document of short paragraphs).
        if self.text.find("{{", start, end) >= 0:
            self.placeholders.extend((m.start(), m.end()) for m in PLACEHOLDER_RE.finditer(self.text, start, end))

    def _markup(self, lt: int) -> int | None:
        """The end of the markup token starting at `lt` ('<'); lt if it is text, None at EOF."""
        text = self.text
        if self.fast and not self.foreign:
            over = _TAG_OVER_RE.match(text, lt)
            if over is not None:
                name = over[2].lower()
                if (name != "body") if over[1] else (name not in _NOTABLE_START):
                    return over.end()
        following = text[lt + 1 : lt + 2]
        if _is_alpha(following):
            tag = _tag(text, lt + 1)
            return None if tag is None else self._start_tag(lt, tag)
        if following == "/":  # §13.2.5.7 end tag open state
            after = text[lt + 2 : lt + 3]
            if _is_alpha(after):
                tag = _tag(text, lt + 2)
                if tag is not None:
                    self._end_tag(lt, tag)
                return None if tag is None else tag.end
            if after == ">":  # missing-end-tag-name: "</>" is dropped
                return lt + 3
            if not after:
                return lt  # "</" at EOF is text
            return self._bogus_comment(lt, lt + 2)
        if following == "!":  # §13.2.5.42 markup declaration open state
            if text.startswith("--", lt + 2):
                return self._comment(lt)
            if text[lt + 2 : lt + 9].lower() == "doctype":
                end = text.find(">", lt + 9)  # every DOCTYPE state ends at '>'
                return None if end < 0 else end + 1
            if text.startswith("[CDATA[", lt + 2) and self.foreign:  # §13.2.5.69 CDATA section
                end = text.find("]]>", lt + 9)
                return None if end < 0 else end + 3
            return self._bogus_comment(lt, lt + 2)  # incorrectly-opened-comment
        if following == "?":  # unexpected-question-mark-instead-of-tag-name
            return self._bogus_comment(lt, lt + 1)
        return lt

    def _start_tag(self, lt: int, tag: _Tag) -> int | None:
        if tag.name in ("a", "area"):
            self.anchors.append(Anchor(tag.name, tag.attributes))
        if self.foreign:
            if tag.name in _BREAKOUT or (
                tag.name == "font" and any(a.name in ("color", "face", "size") for a in tag.attributes)
            ):
                self.foreign = 0
            else:
                self.foreign += tag.name in _FOREIGN and not tag.self_closing
                return tag.end
        if tag.name in _FOREIGN:
            self.foreign = 0 if tag.self_closing else 1
            return tag.end
        # The self-closing flag of a non-void HTML element is ignored: <title/> still opens.
        if tag.name == "plaintext":
            return None  # §13.2.5.5: the rest of the document is text
        if tag.name == "script":
            close = _script_end(self.text, tag.end)
        elif tag.name in _RAW_TEXT:
            # §13.2.5.11-13: only an "appropriate end tag" ends it: "</" + the same name
            # (any case) + whitespace, '/' or '>'.
            pattern = re.compile("</" + tag.name + r"(?=[\t\n\f\r />])", re.IGNORECASE)
            match = pattern.search(self.text, tag.end)
            close = None if match is None else match.start()
        else:
            return tag.end
        end_tag = None if close is None else _tag(self.text, close + 2)
        return None if end_tag is None else end_tag.end

    def _end_tag(self, lt: int, tag: _Tag) -> None:
        if tag.name == "body":
            # Outside a conditional region, just before it; inside one, before the region.
            self.body_end = self.regions[0] if self.regions else lt
        elif tag.name in _FOREIGN and self.foreign:
            self.foreign -= 1

    def _comment(self, lt: int) -> int | None:
        # §13.2.5.43 comment start and §13.2.5.44 comment start dash states: "<!-->" and
        # "<!--->" are empty comments. Otherwise the first "-->" or "--!>" ends it (the
        # nested "<!--" states, §13.2.5.46-49, only report errors); EOF ends it too.
        start = lt + 4
        if self.text.startswith(">", start):
            return start + 1
        if self.text.startswith("->", start):
            return start + 2
        match = _COMMENT_END_RE.search(self.text, start)
        if match is None:
            return None
        self._conditional(lt, self.text[start : match.start()])
        return match.end()

    def _bogus_comment(self, lt: int, start: int) -> int | None:
        # §13.2.5.41 bogus comment state: to the first '>'.
        end = self.text.find(">", start)
        if end < 0:
            return None
        self._conditional(lt, self.text[start:end])
        return end + 1

    def _conditional(self, lt: int, data: str) -> None:
        opens = _CONDITION_OPEN_RE.match(data) is not None
        closes = _CONDITION_CLOSE_RE.search(data) is not None
        if opens and not closes:
            self.regions.append(lt)
        elif closes and not opens and self.regions:
            self.regions.pop()


def _is_alpha(char: str) -> bool:
    return char.isascii() and char.isalpha()


def _tag(text: str, name_start: int) -> _Tag | None:
    """A start or end tag whose name starts at `name_start`; None if EOF cuts it short.

    §13.2.5.8 tag name to §13.2.5.40 self-closing start tag state.
    """
    name = _TAG_NAME_RE.match(text, name_start)
    assert name is not None  # the pattern matches the empty string
    attributes: list[Attribute] = []
    pos = name.end()
    while True:
        separators = _SEPARATORS_RE.match(text, pos)
        assert separators is not None
        pos = separators.end()
        if pos == len(text):
            return None  # eof-in-tag: the tag is not emitted
        if text[pos] == ">":
            # A '/' right before '>' is the self-closing flag (§13.2.5.40).
            return _Tag(name[0].lower(), pos + 1, tuple(attributes), separators[0].endswith("/"))
        attribute = _attribute(text, pos, separators[0])
        if attribute is None:
            return None
        attributes.append(attribute)
        pos = attribute.end


def _attribute(text: str, start: int, separators: str) -> Attribute | None:
    name = _ATTRIBUTE_NAME_RE.match(text, start)
    assert name is not None  # text[start] is neither a separator nor '>'
    lead = start - (len(separators) - len(separators.rstrip(_WS)))
    spaces = _SPACES_RE.match(text, name.end())
    assert spaces is not None
    if not text.startswith("=", spaces.end()):  # §13.2.5.34: a bare attribute
        return Attribute(name[0].lower(), None, lead, start, name.end(), name.end(), "")
    value_spaces = _SPACES_RE.match(text, spaces.end() + 1)
    assert value_spaces is not None
    value_start = value_spaces.end()
    quote = text[value_start : value_start + 1]
    if quote in ('"', "'"):  # §13.2.5.36-37: to the matching quote
        close = text.find(quote, value_start + 1)
        if close < 0:
            return None
        raw, end = text[value_start + 1 : close], close + 1
    elif quote:
        unquoted = _UNQUOTED_RE.match(text, value_start)
        assert unquoted is not None
        quote, raw, end = "", unquoted[0], unquoted.end()
    else:
        return None
    return Attribute(name[0].lower(), unescape_attribute(raw), lead, start, end, value_start, quote)


def _script_end(text: str, start: int) -> int | None:
    """Where the "</script" that ends a script element begins; None if none does."""
    pos, state = start, "data"
    while True:
        if state == "data":
            match = _SCRIPT_DATA_RE.search(text, pos)
            if match is None:
                return None
            if match[0] != "<!--":
                return match.start()
            # §13.2.5.20: "<!--" leaves us in the escaped dash dash state, whose '>'
            # returns to script data: its dashes count toward "-->" ("<!-->" escapes nothing).
            state, pos = "escaped", match.end() - 2
            continue
        match = _SCRIPT_ESCAPED_RE.search(text, pos)
        if match is None:
            return None
        pos = match.end()
        if match[0] == "-->":  # §13.2.5.23 / §13.2.5.30: back to script data
            state = "data"
        elif state == "escaped":
            if match[1]:  # §13.2.5.26 escaped end tag name: the end of the element
                return match.start()
            state = "double"  # §13.2.5.27 double escape start
        elif match[1]:  # §13.2.5.32 double escape end
            state = "escaped"


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
