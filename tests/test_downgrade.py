from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.downgrade import DowngradeError, needs_8bitmime, needs_smtputf8, to_7bit


def msg(text: str, eol: str = "\r\n") -> bytes:
    """Test messages are written with \\n and sent with CRLF unless asked otherwise."""
    return text.replace("\n", eol).encode("utf-8")


def parse(data: bytes) -> EmailMessage:
    m = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(m, EmailMessage)
    return m


def leaves(data: bytes) -> list[str]:
    """The decoded text of every leaf part, in order."""
    return [str(p.get_content()) for p in parse(data).walk() if not p.is_multipart()]


def is_7bit(data: bytes) -> bool:
    return data.isascii()


SINGLE = msg("""From: a@example.com
Subject: hello
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Grüße aus Köln
""")

SINGLE_QP = msg("""From: a@example.com
Subject: hello
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

Gr=C3=BC=C3=9Fe aus K=C3=B6ln
""")


@pytest.mark.parametrize(("raw", "body8", "head8"), [
    (SINGLE, True, False),
    (SINGLE_QP, False, False),
    (msg("Subject: Grüße\n\nhello\n"), False, True),
    (msg("Subject: Grüße\n\nGrüße\n"), True, True),
    (b"Subject: x\r\n", False, False),
    (b"Subject: x\r\nX: \xff", False, True),  # no blank line: everything is header
    (b"\r\n\xff", True, False),  # no header at all
    (b"Subject: x\n\n\xff", True, False),
    (b"", False, False),
])
def test_needs(raw: bytes, body8: bool, head8: bool) -> None:
    assert needs_8bitmime(raw) is body8
    assert needs_smtputf8(raw) is head8


def test_single_part_exact_bytes() -> None:
    assert to_7bit(SINGLE) == SINGLE_QP


def test_seven_bit_message_is_returned_as_is() -> None:
    assert to_7bit(SINGLE_QP) is SINGLE_QP


def test_lf_line_endings_are_kept() -> None:
    assert to_7bit(SINGLE.replace(b"\r\n", b"\n")) == SINGLE_QP.replace(b"\r\n", b"\n")


def test_missing_cte_and_mime_version_are_added() -> None:
    raw = msg("From: a@example.com\nContent-Type: text/plain; charset=utf-8\n\nGrüße\n")
    assert to_7bit(raw) == msg("From: a@example.com\nContent-Type: text/plain; charset=utf-8\n"
                               "MIME-Version: 1.0\nContent-Transfer-Encoding: quoted-printable\n\n"
                               "Gr=C3=BC=C3=9Fe\n")


def test_cte_field_name_spelling_and_comments() -> None:
    raw = msg("MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
              "content-transfer-encoding:  8BIT (utf-8\n text)\nX-After: kept\n\nGrüße\n")
    assert to_7bit(raw) == msg("MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
                               "content-transfer-encoding: quoted-printable\nX-After: kept\n\n"
                               "Gr=C3=BC=C3=9Fe\n")


ALTERNATIVE = msg("""From: a@example.com
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="b1"

This is the preamble.
--b1
Content-Type: text/plain; charset=us-ascii

plain and simple
--b1
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: 8bit

<p>Grüße</p>
--b1--
epilogue
""")


def test_multipart_alternative_only_the_8bit_part_changes() -> None:
    expected = ALTERNATIVE.replace(
        b"Content-Transfer-Encoding: 8bit\r\n\r\n<p>Gr\xc3\xbc\xc3\x9fe</p>",
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n<p>Gr=C3=BC=C3=9Fe</p>")
    assert expected != ALTERNATIVE
    out = to_7bit(ALTERNATIVE)
    assert out == expected
    assert leaves(out) == leaves(ALTERNATIVE)


NESTED = msg("""From: a@example.com
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=outer

--outer
Content-Type: multipart/related; boundary="middle"

--middle
Content-Type: multipart/alternative; boundary="inner"

--inner
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Café au lait \x20\x20
--inner
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: quoted-printable

<p>Caf=C3=A9</p>
--inner--

--middle
Content-Type: image/gif
Content-Transfer-Encoding: base64

R0lGODlhAQABAAAAACw=
--middle--
--outer
Content-Type: text/plain; charset=iso-8859-1
Content-Disposition: attachment; filename="note.txt"

""") + b"caf\xe9 = 100%\r\n--outer--\r\n"


def test_nested_multiparts() -> None:
    out = to_7bit(NESTED)
    assert is_7bit(out)
    assert leaves(out) == leaves(NESTED)
    assert b"Caf=C3=A9 au lait  =20\r\n--inner\r\n" in out  # trailing space kept (RFC 2045 rule 3)
    assert b"<p>Caf=C3=A9</p>\r\n--inner--" in out  # the QP part is untouched
    assert b"R0lGODlhAQABAAAAACw=\r\n--middle--" in out
    assert (b'Content-Disposition: attachment; filename="note.txt"\r\n'
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=E9 =3D 100%\r\n--outer--") in out
    # Everything outside the changed parts is byte-identical.
    assert out.count(b"\r\n") == NESTED.count(b"\r\n") + 1  # one added header line


def test_nested_boundary_may_begin_with_the_outer_one() -> None:
    raw = msg("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n"
              "--b\nContent-Type: multipart/alternative; boundary=b2\n\n"
              "--b2\nContent-Type: text/plain; charset=utf-8\n\nÄ\n--b2--\n"
              "--b\nContent-Type: text/plain\n\nx\n--b--\n")
    out = to_7bit(raw)
    assert is_7bit(out)
    assert leaves(out) == leaves(raw) == ["Ä", "x"]


def test_message_rfc822_is_converted_inside_and_relabelled_7bit() -> None:
    raw = msg("""MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=b

--b
Content-Type: message/rfc822
Content-Transfer-Encoding: 8bit

From: x@example.com
Subject: forwarded

Grüße
--b--
""")
    out = to_7bit(raw)
    assert out == msg("""MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=b

--b
Content-Type: message/rfc822
Content-Transfer-Encoding: 7bit

From: x@example.com
Subject: forwarded
MIME-Version: 1.0
Content-Transfer-Encoding: quoted-printable

Gr=C3=BC=C3=9Fe
--b--
""")


def test_multipart_labelled_8bit_is_relabelled_7bit() -> None:
    raw = msg("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\nContent-Transfer-Encoding: 8bit\n\n"
              "--b\nContent-Type: text/plain; charset=utf-8\n\nÄ\n--b--\n")
    assert to_7bit(raw) == msg(
        "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\nContent-Transfer-Encoding: 7bit\n\n"
        "--b\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
        "=C3=84\n--b--\n")


def test_digest_parts_default_to_message_rfc822() -> None:
    raw = msg("MIME-Version: 1.0\nContent-Type: multipart/digest; boundary=d\n\n"
              "--d\n\nSubject: one\n\nÄ\n--d--\n")
    out = to_7bit(raw)
    assert b"--d\r\n\r\nSubject: one\r\nMIME-Version: 1.0\r\nContent-Transfer-Encoding: quoted-printable" \
           b"\r\n\r\n=C3=84\r\n--d--" in out


def test_quoted_printable_lines_are_short_and_decode_back() -> None:
    text = "é" * 100 + " = " + "x" * 200 + "\t\n" + "plain line\n" + "\r stray cr\n"
    raw = msg("MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n") + text.encode()
    out = to_7bit(raw)
    body = out.split(b"\r\n\r\n", 1)[1]
    # The body's own (LF) line endings are kept, and the soft breaks use them too.
    assert max(len(line) for line in re.split(rb"\r?\n", body)) <= 76
    assert b"\r\n" not in body
    assert parse(out).get_content() == text


ERRORS = [
    (msg("Subject: Grüße\nMIME-Version: 1.0\n\nGrüße\n"), "SMTPUTF8"),
    (msg("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n"
         "--b\nContent-Type: text/plain; name=\"ä.txt\"\n\nÄ\n--b--\n"), "header of part 1"),
    (msg("MIME-Version: 1.0\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: binary\n\nÄ"),
     "binary"),
    (msg("MIME-Version: 1.0\nContent-Type: text/plain\nContent-Transfer-Encoding: base64\n\nÄ\n"), "base64"),
    (msg("MIME-Version: 1.0\nContent-Type: text/plain\nContent-Transfer-Encoding: quoted-printable\n\nÄ\n"),
     "quoted-printable"),
    (msg("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\nÄ\n"), "closing boundary"),
    (msg("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\nÄ\n"), "never occurs"),
    (msg("MIME-Version: 1.0\nContent-Type: multipart/mixed\n\nÄ\n"), "without a boundary"),
    (msg("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\nÄ\n--b\n\nx\n--b--\n"), "preamble"),
    (msg("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\nx\n--b--\nÄ\n"), "epilogue"),
    (msg("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\nContent-Transfer-Encoding: binary\n\n"
         "--b\n\nÄ\n--b--\n"), "binary"),
    (msg("MIME-Version: 1.0\nContent-Type: message/partial; id=x; number=1\n\nÄ\n"), "message/partial"),
    (msg("MIME-Version: 1.0\nContent-Transfer-Encoding: 8bit\nContent-Transfer-Encoding: 7bit\n\nÄ\n"),
     "2 content-transfer-encoding fields"),
    (msg("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\nnot a header line ä\n--b--\n"),
     "not a field"),
    (msg("MIME-Version: 1.0\nContent-Type: message/rfc822\n\nSubject: Grüße\n\nx\n"), "attached as the message"),
]


@pytest.mark.parametrize(("raw", "reason"), ERRORS)
def test_unconvertible_messages_raise(raw: bytes, reason: str) -> None:
    with pytest.raises(DowngradeError, match=reason) as info:
        to_7bit(raw)
    assert "\n" not in str(info.value)


def test_seven_bit_garbage_elsewhere_is_not_inspected() -> None:
    # A malformed part that needs no change does not stop the conversion of another.
    raw = msg("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n"
              "--b\nthis part has no header separator\n--b\nContent-Type: text/plain; charset=utf-8\n\nÄ\n--b--\n")
    out = to_7bit(raw)
    assert b"--b\r\nthis part has no header separator\r\n--b\r\n" in out
    assert is_7bit(out)


def test_message_global_may_be_quoted_printable() -> None:
    raw = msg("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n"
              "--b\nContent-Type: message/global\n\nSubject: Grüße\n\nx\n--b--\n")
    out = to_7bit(raw)
    assert b"Content-Type: message/global\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" \
           b"Subject: Gr=C3=BC=C3=9Fe\r\n\r\nx\r\n--b--" in out


@settings(max_examples=200, deadline=None)
@given(text=st.text(), eol=st.sampled_from(["\r\n", "\n"]))
def test_any_text_round_trips(text: str, eol: str) -> None:
    raw = msg("From: a@example.com\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
              "Content-Transfer-Encoding: 8bit\n\n", eol) + text.encode("utf-8")
    out = to_7bit(raw)
    assert is_7bit(out)
    got = parse(out).get_content()
    assert got == text


@settings(max_examples=100, deadline=None)
@given(text=st.text(), other=st.text(alphabet=st.characters(max_codepoint=0x7E, min_codepoint=0x20)))
def test_any_text_round_trips_in_a_multipart(text: str, other: str) -> None:
    raw = msg("MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=\"=_b\"\n\n"
              "--=_b\nContent-Type: text/plain; charset=us-ascii\n\n") + other.encode() + msg(
              "\n--=_b\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n") + \
        text.encode("utf-8") + msg("\n--=_b--\n")
    if any(line.startswith("--=_b") for line in re.split(r"\r\n|\n", text)):
        return  # a text that forges a delimiter line is not the part it claims to be
    out = to_7bit(raw)
    assert is_7bit(out)
    assert leaves(out)[1] == text
