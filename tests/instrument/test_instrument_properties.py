"""Property tests: prepare/render/personalize never raise, are deterministic and faithful."""

from __future__ import annotations

import base64
import email
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.instrument import Prepared, TrackingOptions, personalize, prepare
from relay.instrument.mime import encode_quoted_printable
from relay.instrument.template import pixel
from relay.tokens import Signer
from tests.instrument.faithful import assert_faithful, render_sentinels

SIGNER = Signer([b"property-test-secret"])
OPTIONS = st.builds(TrackingOptions, open=st.booleans(), click=st.booleans(), max_links=st.integers(-1, 5))
FRAGMENTS = [
    '<a href="https://x.test/a?b=1&amp;c=2">',
    "<a href='http://y.test/'>",
    "<a href=https://z.test/>",
    "</a>",
    '<a ses:no-track href="https://n.test/">',
    '<a\nses:tags="k:v;bad:x y" href="https://t.test/">',
    '<a clicktracking=off href="https://o.test/">',
    '<area href="https://m.test/">',
    '<a href="mailto:a@x.test">',
    "<!--",
    "-->",
    "<!--[if mso]>",
    "<![endif]-->",
    "<![if !mso]>",
    "<![endif]>",
    "<body>",
    "</body>",
    "</BODY >",
    "{{ses:openTracker}}",
    "&amp;",
    "&",
    "<",
    ">",
    '"',
    "'",
    "=",
    " ",
    "\n",
    "\r\n",
    "<script>",
    "</script>",
    "<style>",
    "<p>",
    "https://text.test/x",
    "(https://text.test/y_(z))",
    "\u00e9",
    "\u65e5\u672c",
    "<!DOCTYPE html>",
    "<![CDATA[",
    "]]>",
    "<?xml ?>",
    "<a",
    "href=",
    "<!",
    "</",
    "<textarea>",
    "</textarea>",
    "<title>",
    "<plaintext>",
    "<svg>",
    "</svg>",
    "--!>",
    "<!-->",
    "<!--[if !mso]><!-->",
    "<!--<![endif]-->",
    '<a href="https://x.test/a\tb\n">',
    '<a href="https://user:pw@c.test/">',
    "\t",
]
HTMLISH = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=8), max_size=40).map("".join)


def everything_never_raises(raw: bytes, options: TrackingOptions) -> Prepared:
    prepared = prepare(raw, options)
    assert prepared.failure is None or not prepared.failure.startswith("internal error"), prepared.failure
    first = render_sentinels(prepared)
    assert render_sentinels(prepared) == first  # deterministic
    copy = personalize(
        prepared,
        signer=SIGNER,
        base_url="https://t.test",
        https_policy="REQUIRE",
        message_id="m",
        recipient_index=0,
        sent_at=0.0,
    )
    assert copy == personalize(
        prepared,
        signer=SIGNER,
        base_url="https://t.test",
        https_policy="REQUIRE",
        message_id="m",
        recipient_index=0,
        sent_at=0.0,
    )
    if prepared.failure is not None or not (options.open or options.click):
        assert first == raw == copy
    return prepared


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), OPTIONS)
def test_arbitrary_bytes(raw: bytes, options: TrackingOptions) -> None:
    everything_never_raises(raw, options)


@settings(max_examples=200, deadline=None)
@given(
    HTMLISH,
    st.sampled_from(["8bit", "quoted-printable", "base64"]),
    st.sampled_from(["text/html", "text/plain"]),
    st.booleans(),
    OPTIONS,
)
def test_htmlish_parts_are_instrumented_faithfully(
    body: str, cte: str, content_type: str, multipart: bool, options: TrackingOptions
) -> None:
    octets = body.encode("utf-8")
    if cte == "quoted-printable":
        octets = encode_quoted_printable(octets, b"\r\n")
    elif cte == "base64":
        octets = base64.encodebytes(octets).replace(b"\n", b"\r\n")
    part = f"Content-Type: {content_type}; charset=utf-8\r\nContent-Transfer-Encoding: {cte}\r\n\r\n".encode() + octets
    if multipart:
        raw = (
            b'Subject: x\r\nContent-Type: multipart/alternative; boundary="=_b"\r\n\r\n--=_b\r\n'
            b"Content-Type: text/plain\r\n\r\nsee https://plain.test/\r\n--=_b\r\n" + part + b"\r\n--=_b--\r\n"
        )
    else:
        raw = b"Subject: x\r\n" + part
    prepared = everything_never_raises(raw, options)
    if prepared.failure is None and (options.open or options.click):
        assert_faithful(raw, render_sentinels(prepared), prepared)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600) | HTMLISH.map(lambda s: s.encode("utf-8")))
def test_nothing_enabled_returns_the_input(raw: bytes) -> None:
    prepared = prepare(raw, TrackingOptions(open=False, click=False))
    assert (prepared.failure, prepared.links, prepared.has_pixel) == (None, (), False)
    assert prepared.render(None, []) == raw


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="{:"), max_size=300), OPTIONS)
def test_text_without_links_or_html_is_unchanged(text: str, options: TrackingOptions) -> None:
    # no ':' means no URL, no '{' no placeholder; and no HTML part means no pixel.
    raw = b"Subject: x\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    raw += text.encode("utf-8", "surrogatepass")
    prepared = prepare(raw, options)
    assert prepared.links == () and not prepared.has_pixel
    assert prepared.render("https://t.test/o/x", []) == raw


CHARSETS = ["utf-8", "iso-8859-1", "windows-1252", "iso-2022-jp", "shift_jis", "utf-16", "x-bogus", None]
LEAF_TYPES = ["text/html", "text/plain", "application/octet-stream", "message/rfc822", "image/png"]


@st.composite
def leaf_entity(draw: st.DrawFn) -> bytes:
    content_type = draw(st.sampled_from(LEAF_TYPES))
    charset = draw(st.sampled_from(CHARSETS))
    cte = draw(st.sampled_from(["7bit", "8bit", "quoted-printable", "base64", "x-weird", None]))
    text = draw(HTMLISH)
    try:
        octets = text.encode(charset or "utf-8")
    except (LookupError, UnicodeError):
        octets = draw(st.binary(max_size=60))
    if cte == "quoted-printable" and draw(st.booleans()):
        octets = encode_quoted_printable(octets, b"\r\n")
    elif cte == "base64" and draw(st.booleans()):
        octets = base64.encodebytes(octets).replace(b"\n", b"\r\n")
    headers = "Content-Type: " + content_type + (f"; charset={charset}" if charset else "") + "\r\n"
    if cte:
        headers += f"Content-Transfer-Encoding: {cte}\r\n"
    if draw(st.booleans()):
        headers += draw(st.sampled_from(["Content-Disposition: attachment\r\n", "Content-Disposition: inline\r\n"]))
    return headers.encode() + b"\r\n" + octets


def multipart_entity(children: st.SearchStrategy[list[bytes]]) -> st.SearchStrategy[bytes]:
    subtype = st.sampled_from(["mixed", "alternative", "related", "signed", "digest"])
    closed = st.sampled_from([True, True, True, False])
    return st.builds(_multipart, subtype, st.integers(0, 9), children, closed)


def _multipart(subtype: str, n: int, children: list[bytes], closed: bool) -> bytes:
    boundary = f"=_b{n}".encode()
    body = b"".join(b"--" + boundary + b"\r\n" + child + b"\r\n" for child in children)
    head = b"Content-Type: multipart/" + subtype.encode() + b'; boundary="' + boundary + b'"\r\n\r\n'
    return head + b"preamble\r\n" + body + (b"--" + boundary + b"--\r\nepilogue" if closed else b"")


MIME = st.recursive(
    leaf_entity(), lambda children: multipart_entity(st.lists(children, min_size=1, max_size=3)), max_leaves=6
)


@settings(max_examples=200, deadline=None)
@given(MIME, OPTIONS)
def test_random_mime_trees(entity: bytes, options: TrackingOptions) -> None:
    raw = b"From: a@x.test\r\nSubject: fuzz\r\n" + entity
    prepared = everything_never_raises(raw, options)
    if prepared.failure is None and (options.open or options.click):
        assert_faithful(raw, render_sentinels(prepared), prepared)


# --- documents whose structure the generator knows: ground truth for the HTML scanner ---

RAW_ELEMENTS = ["textarea", "title", "xmp", "iframe", "noembed", "noframes", "style", "script", "TextArea"]
HIDDEN = '<a href="https://x.test/hidden">'  # inside raw text or a comment: never tracked
INNER = st.lists(
    st.sampled_from([*FRAGMENTS, HIDDEN, "--!>", "-- >", "--!->", "<!-->", "</TEXTAREA", "\t"]), max_size=8
).map("".join)
PLAIN_TEXT = st.text(alphabet="ab \n\t>=\"'&;/-!", max_size=6)


@st.composite
def raw_text_element(draw: st.DrawFn) -> tuple[str, str]:
    name = draw(st.sampled_from(RAW_ELEMENTS))
    content = draw(INNER)
    # no appropriate end tag inside (HTML §13.2.5.11), and no script escapes (table-tested)
    pattern = re.compile(f"</{name}|<!--" if name == "script" else f"</{name}", re.IGNORECASE)
    while pattern.search(content):
        content = pattern.sub("", content)
    return "raw", f"<{name}>{content}</{name}{draw(st.sampled_from(['>', ' >', '/>', ' x=y>']))}"


@st.composite
def comment(draw: st.DrawFn) -> tuple[str, str]:
    # Nothing that would end it early, and no conditional-comment syntax (regions are generated).
    content = re.sub(r"\[(if|endif)", "", draw(INNER))
    while re.search(r"--!?>", content) or content.startswith((">", "->")):
        content = re.sub(r"--!?>", "", content).removeprefix(">").removeprefix("->")
    if draw(st.booleans()):  # empty comments (HTML §13.2.5.43-44)
        return "opaque", draw(st.sampled_from(["<!-->", "<!--->", "<!---->", "<!----!>"]))
    return "opaque", f"<!--{content}{draw(st.sampled_from(['-->', '--!>', '--->']))}"


def anchor(quote: str) -> tuple[str, str]:
    return "anchor", f"<a href={quote}https://x.test/top{quote}>"


LEAF_ITEMS = st.one_of(
    PLAIN_TEXT.map(lambda text: ("text", text)),
    st.sampled_from(['"', "'", ""]).map(anchor),
    st.sampled_from(["<p>", "</p>", '<div class="x">', "</a>", "</body>", "<!DOCTYPE html>"]).map(
        lambda tag: ("tag", tag)
    ),
    raw_text_element(),
    comment(),
)
CONDITIONS = [
    ("<!--[if !mso]><!-->", "<!--<![endif]-->"),
    ("<![if !mso]>", "<![endif]>"),
    ("<!--[if !IE]-->", "<!--<![endif]-->"),
]


def region(children: list[object], condition: tuple[str, str]) -> object:
    return ("region", condition, children)


DOCUMENT = st.recursive(
    st.lists(LEAF_ITEMS, max_size=6),
    lambda inner: st.lists(LEAF_ITEMS | st.builds(region, inner, st.sampled_from(CONDITIONS)), max_size=6),
    max_leaves=20,
)


OPEN_URL = "https://trk.test/o/px"


def layout(items: list, out: list[str], spans: list[tuple[int, int]], anchors: list[int]) -> None:
    """Writes the document into `out`; records regions, raw text and comments as spans."""
    for item in items:
        start = sum(map(len, out))
        if item[0] == "region":
            _, (opening, closing), children = item
            out.append(opening)
            layout(children, out, spans, anchors)
            out.append(closing)
        else:
            if item[0] == "anchor":
                anchors.append(len(anchors))
                item = ("anchor", item[1].replace("/top", f"/top{len(anchors) - 1}"))
            out.append(item[1])
        if item[0] in ("region", "raw", "opaque"):
            spans.append((start, sum(map(len, out))))


@settings(max_examples=300, deadline=None)
@given(DOCUMENT)
def test_scanner_agrees_with_the_document_structure(items: list) -> None:
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    anchors: list[int] = []
    layout(items, out, spans, anchors)
    body = "".join(out)
    raw = b"Content-Type: text/html; charset=utf-8\r\n\r\n" + body.encode()
    # Links: exactly the live anchors, in order; nothing in raw text or comments.
    prepared = prepare(raw, TrackingOptions(open=False, click=True))
    assert [link.url for link in prepared.links] == [f"https://x.test/top{i}" for i in anchors]
    assert_faithful(raw, render_sentinels(prepared), prepared)
    # The pixel: never inside raw text, a comment or a conditional region.
    prepared = prepare(raw, TrackingOptions(open=True, click=False))
    payload = email.message_from_bytes(prepared.render(OPEN_URL, [])).get_payload(decode=True)
    assert isinstance(payload, bytes)  # (quoted-printable when a line grew past 998 octets)
    rendered = payload.decode()
    at = rendered.index(pixel(OPEN_URL))  # the pixel is the only change: an offset in `body`
    assert rendered.replace(pixel(OPEN_URL), "", 1) == body
    assert not any(start < at < end for start, end in spans), (at, spans)
