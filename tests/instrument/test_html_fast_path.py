"""The scanner's fast path (one regex over tags it only steps over) finds exactly what the
state-by-state tokenizer finds, on generated HTML full of the tokenizer's edge cases."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.instrument.html import _Scanner

PIECES = st.sampled_from([
    "<", ">", "/", "=", '"', "'", " ", "\t", "\n", "a", "b", "x", "-", "!", "?",
    "<div", "</div", "<td", "<p ", "<br/>", "<img src=", "<a href=", "<A HREF='", "</a>", "<area href=",
    "<svg>", "</svg>", "<math", "<font color=red>", "<script>", "</script>", "<style>", "</style >",
    "<title>", "</title>", "<textarea>", "<!--", "-->", "--!>", "<!-->", "<![CDATA[", "]]>", "<!DOCTYPE html>",
    "<!--[if mso]>", "<![endif]-->", "</body>", "<body>", "</BODY", "<plaintext>", "class=\"a>b\"",
    "data-x='y\"z'", "a=b\"c", "= ", "=\"\"", "href=https://e.example/?a=1&amp;b=2", "{{ses:openTracker}}",
    "<table border=0 cellpadding=\"0\">", "</table>", "<p/ class=x>", "<div a= >",
])


@settings(max_examples=3000, deadline=None)
@given(st.lists(PIECES, max_size=40).map("".join))
def test_fast_path_scans_as_the_tokenizer_does(html: str) -> None:
    assert _Scanner(html).run() == _Scanner(html, fast=False).run()


def test_fast_path_on_real_templates() -> None:
    from pathlib import Path
    corpus = sorted(Path(__file__).parent.rglob("*.htm*")) + sorted(Path(__file__).parent.rglob("*.eml"))
    for path in corpus:
        text = path.read_bytes().decode("utf-8", "replace")
        assert _Scanner(text).run() == _Scanner(text, fast=False).run(), path.name
