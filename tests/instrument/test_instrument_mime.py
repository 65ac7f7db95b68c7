from __future__ import annotations

import base64
import binascii
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.instrument import TrackingOptions, prepare
from relay.instrument.mime import encode_quoted_printable, walk
from tests.instrument.faithful import assert_faithful, render_sentinels

CORPUS = pathlib.Path(__file__).parent / "corpus"
BOTH = TrackingOptions(open=True, click=True)


def test_walk_nested_multiparts() -> None:
    raw = (CORPUS / "related-inline.eml").read_bytes()
    leaves = walk(raw)
    assert [(leaf.content_type, leaf.attachment, leaf.opaque) for leaf in leaves] == [
        ("text/plain", False, False),
        ("text/html", False, False),
        ("image/png", False, False),
        ("application/pdf", True, False),
    ]
    assert (
        raw[leaves[0].body_start : leaves[0].body_end]
        == b"Your invoice: https://billing.example.com/invoices/2024-05\r\n"
    )
    assert all(leaf.eol == b"\r\n" for leaf in leaves)


def test_walk_keeps_opaque_subtrees_whole() -> None:
    signed = walk((CORPUS / "smime-signed.eml").read_bytes())
    assert [(leaf.content_type, leaf.opaque) for leaf in signed] == [("multipart/signed", True)]
    forwarded = walk((CORPUS / "forwarded.eml").read_bytes())
    assert [(leaf.content_type, leaf.opaque) for leaf in forwarded] == [("text/html", False), ("message/rfc822", True)]


def message(content_type: str, body: bytes, cte: str | None = None, eol: bytes = b"\r\n") -> bytes:
    headers = [b"From: a@x.test", b"Content-Type: " + content_type.encode()]
    if cte:
        headers.append(b"Content-Transfer-Encoding: " + cte.encode())
    return eol.join(headers) + eol + eol + body


@pytest.mark.parametrize(
    ("raw", "failure"),
    [
        (message("multipart/mixed", b"--b\r\n\r\nx\r\n--b--\r\n"), "multipart/mixed without a boundary"),
        (message("multipart/mixed; boundary=b", b"no delimiter here\r\n"), "multipart boundary not found"),
        (message("multipart/mixed; boundary=b", b"--b\r\n\r\nhi\r\n"), "missing closing multipart boundary"),
        (message("multipart/mixed; boundary=b", b"--b--\r\n"), "multipart closes before its first part"),
        (
            message("text/html", b"<a href='https://x.test/'>", "x-uuencode"),
            "unsupported Content-Transfer-Encoding 'x-uuencode'",
        ),
        (message("text/html", b"PGE+=QQ==", "base64"), "invalid base64 body"),
        (message("text/html", b"PGE+\r\nQQ", "base64"), "invalid base64 body"),
        (message("text/html; charset=utf-8", b"caf\xe9"), "body is not valid utf-8"),
        (message("text/html", b"caf\xe9"), "undeclared charset and the body is not UTF-8"),
        (message("text/html; charset=base64", b"hi"), "unknown charset 'base64'"),
        (message("text/html; charset=utf-16", b"\xfe\xff\x00h\x00i"), "body is not valid utf-16"),
        (
            b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n"
            + b"".join(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1) for i in range(50))
            + b"--b50\r\n\r\nhi\r\n"
            + b"".join(b"--b%d--\r\n" % i for i in range(50, -1, -1)),
            "MIME nesting too deep",
        ),
    ],
)
def test_malformed_messages_fail_and_pass_through(raw: bytes, failure: str) -> None:
    prepared = prepare(raw, BOTH)
    assert prepared.failure == failure
    assert prepared.render("https://trk.test/o/x", []) == raw


def test_malformed_parts_that_are_not_instrumented_do_not_matter() -> None:
    # Broken base64 in an image and an unknown charset in an attachment are not our business.
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/html\r\n\r\n"
        b'<a href="https://x.test/">x</a>\r\n--b\r\nContent-Type: image/png\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n***\r\n--b\r\nContent-Type: text/plain; charset=x-unknown\r\n"
        b"Content-Disposition: attachment\r\n\r\n\xff\r\n--b--\r\n"
    )
    prepared = prepare(raw, BOTH)
    assert prepared.failure is None and len(prepared.links) == 1
    assert_faithful(raw, render_sentinels(prepared), prepared)


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
@pytest.mark.parametrize("cte", [None, "7bit", "8bit", "quoted-printable", "base64"])
def test_round_trip_each_transfer_encoding(cte: str | None, eol: bytes) -> None:
    html = '<p>Gr\u00fc\u00dfe \u2014 <a href="https://x.test/a?b=1&amp;c=2">x</a></p>\n<p>' + "long " * 40 + "</p>\n"
    html = html.replace("\n", eol.decode())
    octets = html.encode("utf-8")
    if cte == "quoted-printable":
        body = encode_quoted_printable(octets, eol)
    elif cte == "base64":
        body = eol.join(base64.encodebytes(octets).rstrip(b"\n").split(b"\n")) + eol
    else:
        body = octets
    raw = message("text/html; charset=utf-8", body, cte, eol)
    prepared = prepare(raw, BOTH)
    assert prepared.failure is None
    out = render_sentinels(prepared)
    assert_faithful(raw, out, prepared)
    if eol == b"\n":
        assert b"\r" not in out
    if cte in ("quoted-printable", "base64"):
        assert all(len(line) <= 76 for line in out.split(eol))


def test_seven_bit_stays_seven_bit_and_headers_stay() -> None:
    raw = message("text/html; charset=us-ascii", b'<a href="https://x.test/">x</a>\r\n', "7bit")
    out = render_sentinels(prepare(raw, BOTH))
    assert out.isascii()
    assert out.startswith(
        b"From: a@x.test\r\nContent-Type: text/html; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
    )


def test_quoted_printable_soft_breaks_inside_urls_are_decoded() -> None:
    body = b'<a href=3D"https://x.test/a-very-long-path/that-is-soft-broken-by-the-encoder/=\r\nright-here?x=3D1&amp;y=3D2">x</a>\r\n'
    prepared = prepare(message("text/html; charset=utf-8", body, "quoted-printable"), BOTH)
    assert (
        prepared.links[0].url == "https://x.test/a-very-long-path/that-is-soft-broken-by-the-encoder/right-here?x=1&y=2"
    )


def test_base64_keeps_what_followed_the_last_line() -> None:
    octets = b'<a href="https://x.test/">x</a>'
    for trailer in (b"", b"\r\n", b"\r\n\r\n"):
        raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/html\r\n"
        raw += b"Content-Transfer-Encoding: base64\r\n\r\n"
        raw += base64.b64encode(octets) + trailer + b"\r\n--b--\r\n"
        out = render_sentinels(prepare(raw, TrackingOptions(open=False, click=True)))
        encoded = base64.b64encode(b'<a href="https://trk.test/c/0">x</a>')
        assert out.endswith(encoded + trailer + b"\r\n--b--\r\n")


@pytest.mark.parametrize(
    ("charset", "text"),
    [
        ("iso-8859-1", "Gr\u00fc\u00dfe"),
        ("windows-1252", "\u201cquoted\u201d \u20ac"),
        ("iso-2022-jp", "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8"),
        ("gb2312", "\u60a8\u597d"),
        ("shift_jis", "\u8868\u793a"),  # 0x95 0x5c: a trail byte that is ASCII '\'
        ("koi8-r", "\u041f\u0440\u0438\u0432\u0435\u0442"),
        ("utf-8", "\U0001f600 emoji"),
    ],
)
def test_charsets_round_trip(charset: str, text: str) -> None:
    html = f'<p>{text}</p><a href="https://x.test/">{text}</a><p>{text}</p>\r\n'
    for cte in ("8bit", "quoted-printable", "base64"):
        octets = html.encode(charset)
        body = {
            "8bit": octets,
            "quoted-printable": encode_quoted_printable(octets, b"\r\n"),
            "base64": base64.encodebytes(octets).replace(b"\n", b"\r\n"),
        }[cte]
        raw = message(f"text/html; charset={charset}", body, cte)
        prepared = prepare(raw, BOTH)
        assert prepared.failure is None, (charset, cte)
        assert_faithful(raw, render_sentinels(prepared), prepared)


def test_headerless_part_and_padded_delimiters() -> None:
    raw = (
        b'Content-Type: multipart/alternative; boundary="b b"\r\n\r\n'
        b"--b b  \r\n\r\nplain https://x.test/1\r\n"
        b"--b bX\r\nnot a delimiter\r\n"
        b'--b b\t\r\nContent-Type: text/html\r\n\r\n<a href="https://x.test/2">2</a>\r\n--b b-- \r\nepilogue'
    )
    prepared = prepare(raw, TrackingOptions(open=False, click=True))
    assert [link.url for link in prepared.links] == ["https://x.test/1", "https://x.test/2"]
    assert_faithful(raw, render_sentinels(prepared), prepared)


def test_digest_parts_default_to_message_rfc822() -> None:
    raw = (
        b"Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nFrom: x@y.test\r\n\r\nhttps://x.test/\r\n"
        b"--d\r\nContent-Type: text/plain\r\n\r\nhttps://y.test/\r\n--d--\r\n"
    )
    assert [link.url for link in prepare(raw, BOTH).links] == ["https://y.test/"]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.sampled_from([b"\r\n", b"\n"]))
def test_quoted_printable_encoder_is_exact_and_legal(data: bytes, eol: bytes) -> None:
    encoded = encode_quoted_printable(data, eol)
    assert binascii.a2b_qp(encoded) == data
    lines = encoded.split(eol)
    assert all(len(line) <= 76 for line in lines)
    assert all(line[-1:] not in (b" ", b"\t") for line in lines)
    assert all(0x20 <= byte < 0x7F or byte == 0x09 for line in lines for byte in line)


def test_quoted_printable_examples() -> None:
    assert encode_quoted_printable(b"a=b \r\nc\t\r\n", b"\r\n") == b"a=3Db=20\r\nc=09\r\n"
    assert encode_quoted_printable(b"x" * 80, b"\n") == b"x" * 75 + b"=\n" + b"x" * 5
    assert encode_quoted_printable(b"x" * 74 + b"\xe9" * 2, b"\n") == b"x" * 74 + b"=\n=E9=E9"
    assert encode_quoted_printable(b"a\rb\nc", b"\r\n") == b"a=0Db=0Ac"
