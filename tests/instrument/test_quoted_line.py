"""A quoted-printable line escaped ahead of time (part.QuotedLine) renders exactly as
encoding the filled line from scratch does, for the charsets it is used with."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.instrument.mime import encode_quoted_printable_line, quoted_printable_escape
from relay.instrument.part import QuotedLine
from relay.instrument.template import Slot, Template

TEXT = st.text(alphabet=st.characters(min_codepoint=9, max_codepoint=0x24FF, blacklist_characters="\r\n"),
               max_size=120)
URL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~:/?#[]@!$&'()*+,;= ", min_size=1, max_size=200)


@settings(max_examples=400, deadline=None)
@given(st.lists(TEXT, min_size=2, max_size=5), st.lists(URL, min_size=4, max_size=4),
       st.sampled_from(["utf-8", "latin-1", "windows-1252"]), st.sampled_from([b"\r\n", b"\n"]),
       st.sampled_from(['"', "'", "text", "unquoted"]))
def test_escaped_once_equals_escaped_per_copy(pieces: list[str], urls: list[str], charset: str, eol: bytes,
                                              style: str) -> None:
    pieces = [p.encode(charset, "ignore").decode(charset) for p in pieces]  # representable text only
    slots = tuple(Slot(i % 3, style) for i in range(len(pieces) - 1))
    template = Template(tuple(pieces), slots)
    line = QuotedLine(template, tuple(quoted_printable_escape(p.encode(charset)) for p in pieces))
    expected = encode_quoted_printable_line(template.fill(None, urls).encode(charset), eol)
    assert line.render(None, urls, eol) == expected
