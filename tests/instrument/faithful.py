"""Checks that an instrumented message differs from its original only where it may.

Parts are decoded with the stdlib `email` package (independent of relay's walker);
text parts must come back exactly when each tracking URL is replaced by its original;
HTML parts are diffed token by token and every difference must be a rewritten href,
a removed control attribute (and whitespace before it), a removed placeholder or the
pixel. Headers, preambles, epilogues and every other part must be byte-identical, with
one exception: a 7bit/8bit body-text part whose copy got a line over 998 octets goes
out quoted-printable, and its Content-Transfer-Encoding says so (value replaced in
place, or the field added at the end of its header block; a whole message without
MIME-Version gets "MIME-Version: 1.0" too, RFC 2045 §4).
"""

from __future__ import annotations

import difflib
import email
import html
import re
from collections import Counter
from dataclasses import dataclass
from email.message import Message
from email.policy import compat32

from relay.instrument import Prepared
from relay.instrument.mime import walk
from relay.instrument.template import pixel

CLICK = "https://trk.test/c/{}"
OPEN = "https://trk.test/o/pixel"
_CLICK_RE = re.compile(r"https://trk\.test/c/(\d+)")
_PIXEL = pixel(OPEN)
_CONTROL_RE = re.compile(
    r"(?i)(ses:no-track|ses:tags|clicktracking|data-pm-no-track|data-msys-clicktrack|disable-tracking"
    r"|mc:disable-tracking)(=.*)?",
    re.S,
)
_PLACEHOLDER_RE = re.compile(r"\{\{\s*ses:openTracker\s*\}\}")
_TOKEN_RE = re.compile(
    r"""\ue000\d+\ue001|\ue002
    |[^\s<>"'=/\ue000-\ue002]+\s*=\s*(?:"[^"]*"|'[^']*'|\ue000\d+\ue001|[^\s>"'\ue000-\ue002]*)
    |\s+
    |[^\s<>"'=/{}\ue000-\ue002]+
    |.""",
    re.X | re.S,
)


def render_sentinels(prepared: Prepared, with_pixel: bool = True, pad: int = 0) -> bytes:
    """Render with sentinel URLs; `pad` zeros lengthen each click URL (same index)."""
    urls = [CLICK.format("0" * pad + str(i)) for i in range(len(prepared.links))]
    return prepared.render(OPEN if with_pixel else None, urls)


@dataclass
class Changes:
    links: list[int]  # indexes of rewritten links, in the order found
    pixels: int
    removed: list[str]  # removed control attributes and placeholders


def assert_faithful(raw: bytes, out: bytes, prepared: Prepared) -> Changes:
    """Assert that `out` is `raw` with only expected changes; return what changed."""
    original, output = _parse(raw), _parse(out)
    single = not original.is_multipart() and _body_text(original, False)
    assert output.items() == _expected_items(original, output, single, top=True), "top-level headers changed"
    changes = Changes([], 0, [])
    pairs = list(zip(_leaves(original), _leaves(output), strict=True))
    for (old, old_opaque), (new, _) in pairs:
        expected = _expected_items(old, new, _body_text(old, old_opaque), top=old is original)
        assert new.items() == expected, "part headers changed"
        if _body_text(old, old_opaque):
            old_text, new_text = _decoded(old), _decoded(new)
            if old.get_content_type() == "text/html":
                _diff_html(old_text, new_text, prepared, changes)
            else:
                _diff_text(old_text, new_text, prepared, changes)
        else:
            assert new.get_payload() == old.get_payload(), f"{old.get_content_type()} part changed"
    for old, new in zip(original.walk(), output.walk(), strict=True):
        assert (new.preamble, new.epilogue) == (old.preamble, old.epilogue)
    assert _skeleton(out) == _skeleton(_recoded(raw, out)), "bytes outside the body-text parts changed"
    assert sorted(changes.links) == list(range(len(prepared.links))), "each link rewritten exactly once"
    return changes


def _parse(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=compat32)


def _leaves(message: Message, opaque: bool = False) -> list[tuple[Message, bool]]:
    content_type = message.get_content_type()
    opaque = (
        opaque or content_type in ("multipart/signed", "multipart/encrypted") or content_type.startswith("message/")
    )
    payload = message.get_payload()
    if isinstance(payload, list):
        return [leaf for part in payload if isinstance(part, Message) for leaf in _leaves(part, opaque)]
    return [(message, opaque)]


def _body_text(part: Message, opaque: bool) -> bool:
    return (
        not opaque
        and part.get_content_disposition() != "attachment"
        and part.get_content_type() in ("text/html", "text/plain")
    )


def _decoded(part: Message) -> str:
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode(part.get_content_charset() or "utf-8")


_CTE = "content-transfer-encoding"
_QP = "quoted-printable"


def _cte(part: Message) -> str:
    return str(part.get(_CTE, "7bit")).split("(")[0].strip().lower() or "7bit"


def _expected_items(old: Message, new: Message, body_text: bool, top: bool) -> list[tuple[str, str]]:
    """old's header fields as `new` may have them (the line-limit exception, parsed)."""
    items = list(old.items())
    if not (body_text and _cte(old) in ("7bit", "8bit") and _cte(new) == _QP):
        return items
    had_cte = any(name.lower() == _CTE for name, _ in items)
    # Only the value changes (its bytes are checked exactly by the skeleton comparison).
    value = str(new.get(_CTE))
    assert value.strip() == _QP, f"Content-Transfer-Encoding {value!r}"
    items = [(name, value if name.lower() == _CTE else old_value) for name, old_value in items]
    if top and "mime-version" not in old:
        items.append(("MIME-Version", "1.0"))
    if not had_cte:
        items.append(("Content-Transfer-Encoding", _QP))
    return items


def _recoded(raw: bytes, out: bytes) -> bytes:
    """raw with the header edits for the body-text parts that `out` has recoded as QP.

    Written independently of relay's splicing, for single-line fields only.
    """
    old_leaves, new_leaves = walk(raw), walk(out)
    assert len(old_leaves) == len(new_leaves), "MIME structure changed"
    pieces, position = [], 0
    for old, new in zip(old_leaves, new_leaves, strict=True):
        body_text = not (old.opaque or old.attachment) and old.content_type in ("text/html", "text/plain")
        if body_text and old.transfer_encoding in ("7bit", "8bit") and new.transfer_encoding == _QP:
            pieces.append(raw[position : old.header_start])
            pieces.append(_qp_header(raw[old.header_start : old.body_start], top=old.header_start == 0))
            position = old.body_start
    return b"".join([*pieces, raw[position:]])


_CTE_LINE_RE = re.compile(rb"(?im)^(content-transfer-encoding:)([ \t]*)([^\r\n]*?)([ \t]*\r?\n)")


def _qp_header(block: bytes, top: bool) -> bytes:
    """A header block (ending with its blank line) with Content-Transfer-Encoding: QP."""
    eol = b"\r\n" if block.endswith(b"\r\n") else b"\n"
    block, blank = block[: len(block) - len(eol)], eol
    block, found = _CTE_LINE_RE.subn(
        lambda m: m[1] + (m[2] + b"quoted-printable" if m[3] else b" quoted-printable" + m[2]) + m[4], block
    )
    if top and not re.search(rb"(?im)^mime-version:", block):
        block += b"MIME-Version: 1.0" + eol
    if not found:
        block += b"Content-Transfer-Encoding: quoted-printable" + eol
    return block + blank


def _skeleton(raw: bytes) -> bytes:
    """The message with the bodies of text/html and text/plain body parts cut out."""
    pieces, position = [], 0
    for leaf in walk(raw):
        if not (leaf.opaque or leaf.attachment) and leaf.content_type in ("text/html", "text/plain"):
            pieces.append(raw[position : leaf.body_start])
            position = leaf.body_end
    return b"<body>".join([*pieces, raw[position:]])


def _diff_text(old: str, new: str, prepared: Prepared, changes: Changes) -> None:
    found = [int(m[1]) for m in _CLICK_RE.finditer(new)]
    restored = _CLICK_RE.sub(lambda m: prepared.links[int(m[1])].url, new)
    assert restored == old, "text part changed outside its URLs"
    assert all(prepared.links[i].tags == {} for i in found)
    changes.links.extend(found)


# Coarse tokens: whole tags and the text between them. Edits never add or remove a
# tag, so after dropping pixels and merging adjacent text the two documents pair up
# token by token, with no alignment guesswork between repeated identical tags.
# A start or end tag runs to the first ">" even through a "<": in the tag name state and
# in attribute names "<" is just a character (HTML §13.2.5.8, .32), so "<a<!--x>" is one
# tag, not a text and a comment. So does a markup declaration that is not a comment
# ("<!DOCTYPE", "<![CDATA[" outside foreign content, any other "<!"), a "<?" and a "</"
# not followed by a letter: bogus comments, to the first ">" (§13.2.5.41-42, .6-7). One
# that the document ends inside is no text either (eof-in-tag: browsers drop it).
_OUTER_RE = re.compile(r"</?[A-Za-z][^>]*(?:>|\Z)|<(?:!|\?|/(?=[^A-Za-z]))[^>]*(?:>|\Z)|<[^<>]*>|[^<]+|<")
# A comment is one token, whatever it holds (HTML §13.2.5.43-52): it ends at the first
# "-->" or "--!>" ("<!-->" and "<!--->" are empty), else at the end of the document
# (eof-in-comment). Not so inside raw text or script data, where "<!--" is text.
_COMMENT_END_RE = re.compile(r"--!?>")
_RAW_TEXT_RE = re.compile(r"<(script|style|title|textarea|xmp|iframe|noembed|noframes)\b[^>]*>(.*?)(</\1|\Z)",
                          re.IGNORECASE | re.DOTALL)


def _comment_end(text: str, start: int) -> int:
    after = start + 4
    for empty in (">", "->"):
        if text.startswith(empty, after):
            return after + len(empty)
    end = _COMMENT_END_RE.search(text, after)
    return len(text) if end is None else end.end()


def _outer_tokens(text: str) -> list[str]:
    raw = [(m.start(2), m.end(2)) for m in _RAW_TEXT_RE.finditer(text)]
    tokens: list[str] = []
    run: list[str] = []
    pos = 0
    while pos < len(text):
        if text.startswith("<!--", pos) and not any(a <= pos < b for a, b in raw):
            end = _comment_end(text, pos)
        else:
            m = _OUTER_RE.match(text, pos)
            assert m is not None
            end = m.end()
        token = text[pos:end]
        pos = end
        if len(token) > 1 and token[0] == "<":
            if run:
                tokens.append("".join(run))
                run = []
            tokens.append(token)
        else:
            run.append(token)
    return tokens + (["".join(run)] if run else [])


def _diff_html(old: str, new: str, prepared: Prepared, changes: Changes) -> None:
    marked = new.replace(_PIXEL, "\ue002")
    changes.pixels += marked.count("\ue002")
    marked = _CLICK_RE.sub(lambda m: f"\ue000{m[1]}\ue001", marked).replace("\ue002", "")
    before, after = _outer_tokens(old), _outer_tokens(marked)
    if len(before) != len(after):  # a text run that was only placeholders vanished
        kept: list[str] = []
        for token in before:
            # Text runs lie between tags, so a run that stayed is the token `after` has here
            # (a placeholder in raw text, e.g. <title>, is kept as written).
            if token[0] != "<" and not _PLACEHOLDER_RE.sub("", token) and after[len(kept) : len(kept) + 1] != [token]:
                changes.removed += _PLACEHOLDER_RE.findall(token)
            else:
                kept.append(token)
        before = kept
    assert len(before) == len(after), "tags added or removed"
    for old_token, new_token in zip(before, after, strict=True):
        if old_token == new_token:
            continue
        if len(old_token) > 1 and old_token[0] == "<" and old_token[-1] == ">":
            _diff_tokens(old_token, new_token, prepared, changes)
        elif len(old_token) > 1 and old_token[0] == "<":  # a tag or bogus comment the document ends inside
            raise AssertionError(f"an unfinished tag changed: {old_token!r} -> {new_token!r}")
        else:  # text: only {{ses:openTracker}} placeholders may go
            assert _PLACEHOLDER_RE.sub("", old_token) == new_token, f"text changed: {old_token!r} -> {new_token!r}"
            changes.removed += _PLACEHOLDER_RE.findall(old_token)


def _diff_tokens(old: str, new: str, prepared: Prepared, changes: Changes) -> None:
    # Placeholders are deleted as they stand (no whitespace goes with them).
    changes.removed += _PLACEHOLDER_RE.findall(old)
    old = _PLACEHOLDER_RE.sub("", old)
    before, after = _TOKEN_RE.findall(old), _TOKEN_RE.findall(new)
    matcher = difflib.SequenceMatcher(None, before, after, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            continue
        removed = [t for t in before[i1:i2] if _CONTROL_RE.fullmatch(t)]
        olds = [t for t in before[i1:i2] if t not in removed]
        news = after[j1:j2]
        changes.pixels += news.count("\ue002")
        news = [t for t in news if t != "\ue002"]
        old_space, new_space = [t for t in olds if t.isspace()], [t for t in news if t.isspace()]
        assert not Counter(new_space) - Counter(old_space), f"whitespace added: {before[i1:i2]} -> {after[j1:j2]}"
        assert len(old_space) - len(new_space) <= len(removed), f"whitespace lost: {before[i1:i2]} -> {after[j1:j2]}"
        olds, news = [t for t in olds if not t.isspace()], [t for t in news if not t.isspace()]
        assert len(olds) == len(news), f"unexpected change: {before[i1:i2]!r} -> {after[j1:j2]!r}"
        for old_token, new_token in zip(olds, news, strict=True):
            changes.links.append(_check_href(old_token, new_token, prepared))
        changes.removed.extend(removed)


def _check_href(old: str, new: str, prepared: Prepared) -> int:
    old_name, _, old_value = old.partition("=")
    new_name, _, new_value = new.partition("=")
    old_value, new_value = old_value.lstrip(), new_value.lstrip()
    assert old_name == new_name and old_name.strip().lower() == "href", f"{old!r} -> {new!r}"
    match = re.fullmatch(r"([\"']?)\ue000(\d+)\ue001\1", new_value)
    assert match, f"{old!r} -> {new!r}"
    quote = old_value[0] if old_value[:1] in ("'", '"') else ""
    assert match[1] == quote, "quoting style changed"  # the sentinel URLs need no quotes
    index = int(match[2])
    raw_value = old_value[1:-1] if quote else old_value
    # The URL standard strips C0 controls and spaces at the ends, then removes tab and newline.
    url = html.unescape(raw_value).strip("".join(map(chr, range(0x21)))).translate({9: None, 10: None, 13: None})
    assert url == prepared.links[index].url
    return index
