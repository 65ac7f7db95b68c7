"""Realistic messages from tests/instrument/corpus: what is tracked, and that nothing else changed."""

from __future__ import annotations

import email
import pathlib
from dataclasses import dataclass, field
from email.policy import compat32

import pytest

from relay.instrument import TrackingOptions, prepare
from tests.instrument.faithful import assert_faithful, render_sentinels

CORPUS = pathlib.Path(__file__).parent / "corpus"
BOTH = TrackingOptions(open=True, click=True)

SHOP_NEW = "https://shop.example.com/collections/spring-2024/new-arrivals-for-the-whole-family-and-friends?ref=email-hero&variant=b"
STORY = "https://blog.example.com/2024/04/how-we-source-our-cotton"
PREFS = "https://shop.example.com/preferences?u=42"
DASH = "https://dash.example.com/weekly?w=19"
INVOICE = "https://billing.example.com/invoices/2024-05"
ANGEBOT = "https://shop.example.de/angebote?woche=17&sort=preis"
JP = "https://www.example.jp/campaign?id=2024"


@dataclass(frozen=True)
class Expect:
    links: list[str]
    pixels: int
    tags: dict[int, dict[str, list[str]]] = field(default_factory=dict)
    removed: int = 0  # control attributes + placeholders removed


CASES: dict[str, Expect] = {
    # text part first (walk order); the ses:no-track login URL is untracked in text too.
    "newsletter.eml": Expect(
        [
            SHOP_NEW,
            STORY,
            PREFS,
            "https://shop.example.com/?utm_source=newsletter&utm_medium=email&utm_campaign=spring-2024",
            SHOP_NEW,
            STORY,
            "https://shop.example.com/sale?src=button",  # the VML button in <!--[if mso]> is not
            PREFS,
        ],
        pixels=1,
        tags={3: {"campaign": ["spring"], "position": ["logo"]}, 7: {"kind": ["prefs"], "ok": ["fine"]}},
        removed=3,
    ),
    "base64-html.eml": Expect(
        [
            "https://docs.example.com/guide?x=1&y=2",
            "https://maps.example.com/place/1",  # <area href>
            "https://unquoted.example.com/a?b=c",
        ],
        pixels=1,
    ),
    "iso-8859-1.eml": Expect([ANGEBOT, ANGEBOT], pixels=1),
    # only the link without an opt-out; all five opt-out attributes are stripped.
    "windows-1252.eml": Expect(["https://shop.example.fr/contact"], pixels=1, removed=5),
    "iso-2022-jp.eml": Expect([JP, "https://www.example.jp/mypage", JP], pixels=1),
    "gb2312.eml": Expect(["https://www.example.cn/huodong?id=8"], pixels=1),
    "related-inline.eml": Expect([INVOICE, INVOICE], pixels=1),
    # the attached report.html and notes.txt are left alone.
    "alternative-in-mixed.eml": Expect([DASH, DASH], pixels=1),
    "text-only.eml": Expect(
        [
            "https://ci.example.com/builds/991?tab=log#L120",
            "https://git.example.com/compare/a1b2...c3d4",
            "https://en.wikipedia.org/wiki/Heisenbug_(computing)",
            "https://docs.example.com/ci",
            "https://status.example.com",
        ],
        pixels=0,
    ),
    # the forwarded message/rfc822 keeps its own links.
    "forwarded.eml": Expect(["https://shop.example.com/sale"], pixels=1),
    # both placeholders outside the comment are gone; the first became the pixel.
    "open-tracker.eml": Expect(["https://example.com/one"], pixels=1, removed=2),
    # one 883-character minified line with 8 links: under the limit as sent (see
    # test_instrument_line_limit.py for copies whose tracking URLs push it over).
    "minified-html.eml": Expect(
        ["https://shop.example.com/c/sale?src=text"]
        + [
            f"https://shop.example.com/{path}"
            for path in ("c/women", "c/men", "c/kids", "c/home", "c/sale?src=nav", "stores", "help", "account")
        ],
        pixels=1,
    ),
    # "<![ x [ y ]]>" is a bogus comment to the first '>' (HTML §13.2.5.41), not an error.
    "bogus-comment.eml": Expect(["https://example.com/"], pixels=1),
    "smime-signed.eml": Expect([], pixels=0),
    "pkcs7-mime.eml": Expect([], pixels=0),
}
BROKEN = {
    "broken-missing-boundary.eml": "missing closing multipart boundary",
    "broken-base64.eml": "invalid base64 body",
    "broken-unknown-charset.eml": "unknown charset 'x-klingon-7'",
    "broken-undecodable.eml": "body is not valid utf-8",
}


def test_every_corpus_file_has_a_case() -> None:
    assert {path.name for path in CORPUS.glob("*.eml")} == set(CASES) | set(BROKEN)


@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus_message(name: str) -> None:
    raw = (CORPUS / name).read_bytes()
    expect = CASES[name]
    prepared = prepare(raw, BOTH)
    assert prepared.failure is None
    assert [link.url for link in prepared.links] == expect.links
    assert {i: link.tags for i, link in enumerate(prepared.links) if link.tags} == expect.tags
    assert prepared.has_pixel == (expect.pixels > 0)
    out = render_sentinels(prepared)
    changes = assert_faithful(raw, out, prepared)
    assert changes.pixels == expect.pixels
    assert len(changes.removed) == expect.removed
    if not expect.links and not expect.pixels:
        assert out == raw


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_message_passes_through(name: str) -> None:
    raw = (CORPUS / name).read_bytes()
    prepared = prepare(raw, BOTH)
    assert prepared.failure == BROKEN[name]
    assert prepared.links == () and not prepared.has_pixel
    assert prepared.render("https://trk.test/o/x", []) == raw


@pytest.mark.parametrize("name", sorted(CASES))
def test_line_endings_and_transfer_encoding_rules(name: str) -> None:
    raw = (CORPUS / name).read_bytes()
    out = render_sentinels(prepare(raw, BOTH))
    crlf = b"\r\n" in raw
    lines = out.split(b"\r\n" if crlf else b"\n")
    if crlf:  # no bare LF introduced
        assert all(b"\n" not in line for line in lines)
    for part in email.message_from_bytes(out, policy=compat32).walk():
        if part.is_multipart():
            continue
        cte = (part.get("content-transfer-encoding") or "7bit").lower()
        body = part.get_payload()
        assert isinstance(body, str)
        if cte in ("quoted-printable", "base64"):
            assert all(len(line) <= 76 for line in body.splitlines()), "RFC 2045 line length"
        if cte == "7bit":
            assert body.isascii()


def decoded_part(raw: bytes, content_type: str) -> str:
    """The first part of `content_type`, decoded."""
    part = next(
        p for p in email.message_from_bytes(raw, policy=compat32).walk() if p.get_content_type() == content_type
    )
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode(part.get_content_charset() or "utf-8")


def test_newsletter_details() -> None:
    raw = (CORPUS / "newsletter.eml").read_bytes()
    out = render_sentinels(prepare(raw, BOTH))
    text = decoded_part(out, "text/html")
    # Outlook's VML button inside the conditional comment is untouched.
    assert 'href="https://shop.example.com/sale?src=vml"' in text
    # skipped forms stay exactly as written; opt-outs are gone.
    for kept in (
        'href="#top"',
        'href="mailto:help@example.com?subject=Spring%20offers"',
        'href="tel:+15555550123"',
        'href="{{unsubscribe_url}}"',
        '<a href="https://shop.example.com/account/login?token=one-time-abc123">',
    ):
        assert kept in text
    assert "ses:" not in text.replace("{{ses:openTracker}}", "")
    # the pixel sits just before </body>.
    assert text.index("https://trk.test/o/pixel") < text.index("</body>") < text.index("https://trk.test/o/pixel") + 300
    # the ses:no-track login URL is not tracked in the text part either.
    plain = decoded_part(out, "text/plain")
    assert "Sign in: https://shop.example.com/account/login?token=one-time-abc123" in plain


def test_forwarded_message_is_byte_identical() -> None:
    raw = (CORPUS / "forwarded.eml").read_bytes()
    out = render_sentinels(prepare(raw, BOTH))
    inner_start = raw.index(b"Content-Type: message/rfc822")
    assert out.endswith(raw[inner_start:])
    # the pixel goes before </BODY>, matched case-insensitively.
    assert b'alt="" border="0"' in out and out.index(b"https://trk.test/o/pixel") < out.index(b"</BODY>")


def test_open_tracker_placeholder() -> None:
    raw = (CORPUS / "open-tracker.eml").read_bytes()
    out = render_sentinels(prepare(raw, BOTH)).decode("ascii")
    # the first placeholder outside comments becomes the pixel, the others go away.
    assert out.count("https://trk.test/o/pixel") == 1
    assert out.index("https://trk.test/o/pixel") < out.index("https://trk.test/c/0")
    assert "<!-- {{ses:openTracker}} inside a comment stays -->" in out
    assert out.count("{{ses:openTracker}}") == 1
    assert "<tr><td></td></tr>" in out


@pytest.mark.parametrize(
    ("name", "old", "new"),
    [
        ("newsletter.eml", b"Subject: =?utf-8?q", b"Subject:  =?utf-8?q"),  # a header
        ("newsletter.eml", b"Spring is here, Zo=C3=AB!", b"Spring is here, Zo=C3=AB?"),  # text part
        ("newsletter.eml", b"src=3Dvml", b"src=3Dvm1"),  # inside a comment in QP HTML
        ("iso-8859-1.eml", b"Stra\xdfe", b"Strasse"),  # HTML text
        ("related-inline.eml", b"Content-ID: <logo@", b"Content-ID:  <logo@"),  # part header
        ("related-inline.eml", b"iVBORw0KGgo", b"iVBORw0KGgp"),  # an inline image
        ("alternative-in-mixed.eml", b"preamble text", b"preamble  text"),
        ("alternative-in-mixed.eml", b"raw data", b"raw  data"),  # the .html attachment
    ],
)
def test_checker_notices_unexpected_changes(name: str, old: bytes, new: bytes) -> None:
    raw = (CORPUS / name).read_bytes()
    prepared = prepare(raw, BOTH)
    out = render_sentinels(prepared)
    assert old in out
    with pytest.raises(AssertionError):
        assert_faithful(raw, out.replace(old, new, 1), prepared)


def test_checker_notices_a_wrong_link() -> None:
    raw = (CORPUS / "base64-html.eml").read_bytes()
    prepared = prepare(raw, BOTH)
    urls = ["https://trk.test/c/0", "https://trk.test/c/0", "https://trk.test/c/2"]  # link 1 gets link 0's URL
    with pytest.raises(AssertionError):
        assert_faithful(raw, prepared.render("https://trk.test/o/pixel", urls), prepared)
