"""RFC 5322 §2.1.1 line limit: a 7bit/8bit part whose copy gets a line over 998 octets
goes out quoted-printable, with its Content-Transfer-Encoding header changed to match."""

from __future__ import annotations

import email
import pathlib
import re
from email.message import Message
from email.policy import compat32

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.instrument import TrackingOptions, prepare
from relay.instrument.headers import set_transfer_encoding
from relay.instrument.template import pixel
from tests.instrument.faithful import assert_faithful, render_sentinels
from tests.instrument.test_instrument_corpus import CASES
from tests.instrument.test_instrument_properties import HTMLISH, MIME, OPTIONS

CORPUS = pathlib.Path(__file__).parent / "corpus"
BOTH = TrackingOptions(open=True, click=True)
OPEN = "https://trk.example.net/o/" + "P" * 200
SHORT = [f"https://t.test/c/{i}" for i in range(10)]
# ~300 characters each, like a signed click token that embeds a long original URL.
LONG = [f"https://trk.example.net/c/{'A' * 270}{i:03d}" for i in range(10)]
TARGETS = [f"https://shop.example.com/p/{i}" for i in range(10)]


def long_line(word: str) -> str:
    """One line of exactly 900 characters holding 10 links."""
    links = "".join(f'<a href="{url}">{word} {i}</a> ' for i, url in enumerate(TARGETS))
    line = f"<p>{links}</p>"
    return line[:3] + word[:1] * (900 - len(line)) + line[3:]


def html_body(word: str) -> str:
    return f"<html><body>\r\n{long_line(word)}\r\n</body></html>\r\n"


def multipart(html: bytes, cte: bytes, charset: str) -> bytes:
    return (
        b"From: a@x.test\r\nSubject: long lines\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="=_m"\r\n\r\npreamble\r\n'
        b"--=_m\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nSee the HTML version.\r\n"
        b"--=_m\r\nContent-Type: text/html; charset=" + charset.encode() + b"\r\n"
        b"Content-Transfer-Encoding: " + cte + b"\r\nContent-Language: de\r\n\r\n" + html + b"\r\n"
        b"--=_m\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=a.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--=_m--\r\nepilogue\r\n"
    )


def lines_of(out: bytes) -> list[bytes]:
    """Lines as they go on the wire: aiosmtplib sends a bare CR or LF as CRLF too."""
    return re.split(rb"\r\n|\r|\n", out)


def part_of(out: bytes, content_type: str) -> Message:
    message = email.message_from_bytes(out, policy=compat32)
    return next(part for part in message.walk() if part.get_content_type() == content_type)


def decoded(part: Message) -> str:
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode(part.get_content_charset() or "us-ascii")


def expected_html(html: str, urls: list[str], open_url: str | None) -> str:
    for target, url in zip(TARGETS, urls, strict=True):
        html = html.replace(f'href="{target}"', f'href="{url}"')
    return html.replace("</body>", (pixel(open_url) if open_url else "") + "</body>")


@pytest.mark.parametrize(
    ("cte", "charset", "word"),
    [(b"7bit", "us-ascii", "Link"), (b"8bit", "utf-8", "Gr\u00fc\u00dfe \u2014 \u65e5\u672c")],
)
def test_long_line_goes_out_quoted_printable(cte: bytes, charset: str, word: str) -> None:
    html = html_body(word)
    assert len(long_line(word)) == 900 and len(long_line(word).encode(charset)) <= 998
    raw = multipart(html.encode(charset), cte, charset)
    prepared = prepare(raw, BOTH)
    assert [link.url for link in prepared.links] == TARGETS

    out = prepared.render(OPEN, LONG)
    assert max(map(len, lines_of(out))) <= 998
    assert out.isascii()
    part = part_of(out, "text/html")
    assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert decoded(part) == expected_html(html, LONG, OPEN)
    # Every other byte is the original's: the CTE value is replaced in place, the
    # Content-Language after it, the other parts, preamble and epilogue stay.
    value = raw.index(b"Transfer-Encoding: " + cte) + len(b"Transfer-Encoding: ")
    body_start = raw.index(b"Content-Language: de\r\n\r\n") + len(b"Content-Language: de\r\n\r\n")
    body_end = raw.index(b"\r\n--=_m\r\nContent-Type: application/pdf")
    head = raw[:value] + b"quoted-printable" + raw[value + len(cte) : body_start]
    assert out.startswith(head) and out.endswith(raw[body_end:])
    assert all(len(line) <= 76 for line in lines_of(out[len(head) : len(out) - len(raw) + body_end]))
    # and the checker agrees (long sentinel URLs, same indexes).
    assert_faithful(raw, render_sentinels(prepared, pad=280), prepared)


def test_the_decision_is_per_copy() -> None:
    # A tracking URL embeds the original URL, so its length is only known per copy:
    # the same prepared message gives one recipient 8bit and another quoted-printable.
    html = html_body("Gr\u00fc\u00dfe")
    raw = multipart(html.encode("utf-8"), b"8bit", "utf-8")
    prepared = prepare(raw, BOTH)
    short = prepared.render(OPEN, SHORT)
    assert part_of(short, "text/html")["Content-Transfer-Encoding"] == "8bit"
    assert short == raw.replace(b"</body>", pixel(OPEN).encode() + b"</body>").replace(
        b"https://shop.example.com/p/", b"https://t.test/c/"
    )
    long = prepared.render(OPEN, LONG)
    assert part_of(long, "text/html")["Content-Transfer-Encoding"] == "quoted-printable"
    assert prepared.render(OPEN, SHORT) == short  # nothing stateful between copies


def test_a_line_too_long_before_any_url_recodes_every_copy() -> None:
    # Measured once in prepare(): this line is over the limit whatever the URLs are.
    html = "<p>" + "x" * 1000 + "</p>\r\n" + '<p><a href="https://x.test/">x</a></p>\r\n'
    raw = b"MIME-Version: 1.0\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: 7bit\r\n\r\n" + html.encode()
    prepared = prepare(raw, TrackingOptions(open=False, click=True))
    out = prepared.render(None, ["https://t.test/c/0"])
    assert part_of(out, "text/html")["Content-Transfer-Encoding"] == "quoted-printable"
    assert decoded(part_of(out, "text/html")) == html.replace("https://x.test/", "https://t.test/c/0")
    assert max(map(len, lines_of(out))) <= 76


def test_a_charset_wider_than_ascii_is_measured_whole() -> None:
    # UTF-16: an inserted character is two octets, so the copy itself is measured.
    text = "z" * 480 + " https://x.test/"
    raw = b"Content-Type: text/plain; charset=utf-16-le\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    raw += text.encode("utf-16-le")
    prepared = prepare(raw, BOTH)
    assert prepared.failure is None and [link.url for link in prepared.links] == ["https://x.test/"]
    short = prepared.render(None, ["https://t.test/c/0"])
    assert short == raw.replace("https://x.test/".encode("utf-16-le"), "https://t.test/c/0".encode("utf-16-le"))
    out = prepared.render(None, LONG[:1])
    message = email.message_from_bytes(out, policy=compat32)
    assert message["Content-Transfer-Encoding"] == "quoted-printable"
    assert decoded(message) == text.replace("https://x.test/", LONG[0])
    assert max(map(len, lines_of(out))) <= 76


def test_a_part_under_the_limit_keeps_its_encoding() -> None:
    # The same links spread over short lines: long URLs fit, the part stays 7bit.
    html = "<html><body>\r\n" + "".join(f'<p><a href="{url}">x</a></p>\r\n' for url in TARGETS) + "</body></html>"
    raw = multipart(html.encode("ascii"), b"7bit", "us-ascii")
    out = prepare(raw, BOTH).render(OPEN, LONG)
    expected = expected_html(html, LONG, OPEN).encode("ascii")
    assert out == raw.replace(html.encode("ascii"), expected)
    assert part_of(out, "text/html")["Content-Transfer-Encoding"] == "7bit"


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
def test_pixel_on_a_long_last_line_of_a_whole_message(eol: bytes) -> None:
    # No </body>: the pixel goes at the end of the last line, which then is too long.
    # A whole message without the field gets it at the end of its header block (and
    # MIME-Version, without which RFC 2045 §4 gives the field no meaning).
    body = b"<p>" + b"x" * 900 + b"</p>" + eol
    raw = eol.join([b"From: a@x.test", b"Subject: pixel", b"Content-Type: text/html", b"", body])
    out = prepare(raw, TrackingOptions(open=True, click=False)).render(OPEN, [])
    head = eol.join(
        [
            b"From: a@x.test",
            b"Subject: pixel",
            b"Content-Type: text/html",
            b"MIME-Version: 1.0",
            b"Content-Transfer-Encoding: quoted-printable",
            b"",
            b"",
        ]
    )
    assert out.startswith(head)
    assert max(map(len, lines_of(out))) <= 76
    if eol == b"\n":
        assert b"\r" not in out
    message = email.message_from_bytes(out, policy=compat32)
    assert decoded(message) == (b"<p>" + b"x" * 900 + b"</p>" + pixel(OPEN).encode() + eol).decode()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        # folded, with a comment: the whole value is replaced, the fold kept
        (b"Content-Transfer-Encoding:\r\n\t7bit (plain)\r\n", b"Content-Transfer-Encoding:\r\n\tquoted-printable\r\n"),
        (b"content-transfer-encoding:8BIT  \r\n", b"content-transfer-encoding:quoted-printable  \r\n"),
        (b"Content-Transfer-Encoding:\r\n", b"Content-Transfer-Encoding: quoted-printable\r\n"),
    ],
)
def test_the_field_value_is_spliced_in_place(header: bytes, expected: bytes) -> None:
    raw = b"MIME-Version: 1.0\r\nContent-Type: text/html\r\n" + header + b"X-After: 1\r\n\r\n"
    raw += b'<p><a href="https://x.test/">' + b"x" * 990 + b"</a></p>\r\n"
    out = prepare(raw, BOTH).render(None, ["https://t.test/c/0"])
    assert out.startswith(b"MIME-Version: 1.0\r\nContent-Type: text/html\r\n" + expected + b"X-After: 1\r\n\r\n")
    assert max(map(len, lines_of(out))) <= 76


def test_a_part_without_headers_gets_the_field() -> None:
    raw = (
        b"Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\n\r\n"
        + b"y" * 980
        + b" https://x.test/\r\n--b--\r\n"
    )
    out = prepare(raw, BOTH).render(None, LONG[:1])
    assert out.startswith(b"Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\n")
    assert out.endswith(b"\r\n--b--\r\n")
    part = part_of(out, "text/plain")
    assert part.items() == [("Content-Transfer-Encoding", "quoted-printable")]
    assert decoded(part) == "y" * 980 + " " + LONG[0]


@pytest.mark.parametrize(
    "headers",
    [
        b"Content-Type: text/html\r\nContent-Transfer-Encoding: 7bit\r\nContent-Transfer-Encoding: 8bit\r\n",
        b"Content-Type: text/html\r\nContent-Transfer-Encoding: 7bit\r\nX-Broken: a\rb\r\n",
    ],
)
def test_an_irregular_header_block_is_not_guessed_at(headers: bytes) -> None:
    # Two CTE fields or a bare CR: readers disagree on the header, so relay does not
    # edit it; the part goes out as it did before this rule (long line and all).
    body = b'<p><a href="https://x.test/">' + b"x" * 900 + b"</a></p>\r\n"
    raw = b"MIME-Version: 1.0\r\n" + headers + b"\r\n" + body
    out = prepare(raw, BOTH).render(None, LONG[:1])
    assert out == raw.replace(b"https://x.test/", LONG[0].encode())
    assert set_transfer_encoding(raw, 0, raw.index(body), b"quoted-printable") is None


def test_binary_parts_keep_long_lines() -> None:
    # RFC 3030 BINARYMIME has no line limit; "binary" is left as it was.
    raw = b"Content-Type: text/html\r\nContent-Transfer-Encoding: binary\r\n\r\n<a href='https://x.test/'>"
    raw += b"x" * 990 + b"</a>"
    out = prepare(raw, BOTH).render(None, LONG[:1])
    assert out == raw.replace(b"https://x.test/", LONG[0].encode())


@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus_with_long_tracking_urls(name: str) -> None:
    raw = (CORPUS / name).read_bytes()
    prepared = prepare(raw, BOTH)
    out = render_sentinels(prepared, pad=300)
    assert_faithful(raw, out, prepared)
    assert max(map(len, lines_of(out))) <= 998
    if name == "minified-html.eml":
        assert part_of(out, "text/html")["Content-Transfer-Encoding"] == "quoted-printable"
        assert part_of(out, "text/plain").get("Content-Transfer-Encoding") is None


@settings(max_examples=200, deadline=None)
@given(HTMLISH, st.sampled_from([None, "7bit", "8bit"]), st.sampled_from(["text/html", "text/plain"]), st.booleans())
def test_long_copies_are_faithful_and_short_lined(body: str, cte: str | None, content_type: str, lf: bool) -> None:
    eol = "\n" if lf else "\r\n"
    headers = [f"Content-Type: {content_type}; charset=utf-8"] + ([f"Content-Transfer-Encoding: {cte}"] if cte else [])
    part = (eol.join(headers) + eol + eol).encode() + body.encode("utf-8")
    raw = (
        (
            f'Subject: x{eol}MIME-Version: 1.0{eol}Content-Type: multipart/mixed; boundary="=_b"{eol}{eol}--=_b{eol}'
        ).encode()
        + part
        + f"{eol}--=_b--{eol}".encode()
    )
    prepared = prepare(raw, BOTH)
    assert prepared.failure is None
    out = render_sentinels(prepared, pad=990)
    assert_faithful(raw, out, prepared)
    if prepared.links or prepared.has_pixel:
        assert max(map(len, lines_of(out))) <= 998


@settings(max_examples=200, deadline=None)
@given(MIME, OPTIONS)
def test_random_mime_trees_with_long_urls(entity: bytes, options: TrackingOptions) -> None:
    raw = b"From: a@x.test\r\nSubject: fuzz\r\n" + entity
    prepared = prepare(raw, options)
    if prepared.failure is None and (options.open or options.click):
        short = render_sentinels(prepared)
        out = render_sentinels(prepared, pad=990)
        assert_faithful(raw, out, prepared)
        assert render_sentinels(prepared) == short  # a long copy leaves no trace


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # the header not updated with the body (Postal's bug): garbled mail
        (
            b"Content-Transfer-Encoding: quoted-printable\r\nContent-Language",
            b"Content-Transfer-Encoding: 8bit\r\nContent-Language",
        ),
        # the field moved instead of edited in place
        (
            b"Content-Transfer-Encoding: quoted-printable\r\nContent-Language: de\r\n",
            b"Content-Language: de\r\nContent-Transfer-Encoding: quoted-printable\r\n",
        ),
        (b"Content-Language: de", b"Content-Language:  de"),  # another field of the part
        (b"See the HTML version.", b"See the HTML version!"),  # another part
    ],
)
def test_checker_allows_only_the_cte_edit(old: bytes, new: bytes) -> None:
    raw = multipart(html_body("Gr\u00fc\u00dfe").encode("utf-8"), b"8bit", "utf-8")
    prepared = prepare(raw, BOTH)
    out = render_sentinels(prepared, pad=280)
    assert_faithful(raw, out, prepared)
    assert old in out
    with pytest.raises(AssertionError):
        assert_faithful(raw, out.replace(old, new, 1), prepared)
