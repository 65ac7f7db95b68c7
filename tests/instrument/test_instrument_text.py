from __future__ import annotations

import pytest

from relay.instrument.text import find_urls


@pytest.mark.parametrize(
    ("text", "urls"),
    [
        ("", []),
        ("no links here", []),
        ("Go to https://x.test now", ["https://x.test"]),
        ("http://x.test/a and HTTPS://Y.TEST/B", ["http://x.test/a", "HTTPS://Y.TEST/B"]),
        # trailing sentence punctuation belongs to the sentence
        ("See https://x.test/a.", ["https://x.test/a"]),
        (
            "See https://x.test/a, https://x.test/b; https://x.test/c: ok",
            ["https://x.test/a", "https://x.test/b", "https://x.test/c"],
        ),
        ("Really https://x.test/?! Yes https://x.test/a...", ["https://x.test/", "https://x.test/a"]),
        ("'https://x.test/a' and \"https://x.test/b\"", ["https://x.test/a", "https://x.test/b"]),
        ("*https://x.test/bold*", ["https://x.test/bold"]),
        # inner punctuation stays
        ("https://x.test/a.b,c;d:e!f?g=1", ["https://x.test/a.b,c;d:e!f?g=1"]),
        ("https://x.test/v1.2/", ["https://x.test/v1.2/"]),
        # wrapping
        ("<https://x.test/a>", ["https://x.test/a"]),
        ("<URL:https://x.test/a>", ["https://x.test/a"]),
        ("(https://x.test/a)", ["https://x.test/a"]),
        ("(see https://x.test/a).", ["https://x.test/a"]),
        ("[https://x.test/a]", ["https://x.test/a"]),
        ("[link](https://x.test/a)", ["https://x.test/a"]),
        # balanced parentheses and brackets are part of the URL
        ("https://en.wikipedia.org/wiki/Foo_(bar)", ["https://en.wikipedia.org/wiki/Foo_(bar)"]),
        ("(https://en.wikipedia.org/wiki/Foo_(bar))", ["https://en.wikipedia.org/wiki/Foo_(bar)"]),
        ("https://en.wikipedia.org/wiki/Foo_(bar).", ["https://en.wikipedia.org/wiki/Foo_(bar)"]),
        ("https://x.test/?a[0]=1&b[]=2", ["https://x.test/?a[0]=1&b[]=2"]),
        ("https://x.test/?a=[1]]", ["https://x.test/?a=[1]"]),
        # queries, fragments, @ in paths, ports, userinfo
        ("https://x.test/p?q=1&r=2#frag", ["https://x.test/p?q=1&r=2#frag"]),
        ("https://medium.example/@user/post", ["https://medium.example/@user/post"]),
        ("https://user@x.test:8443/a", ["https://user@x.test:8443/a"]),
        ("https://x.test/a%20b", ["https://x.test/a%20b"]),
        ("line one https://x.test/a\nhttps://x.test/b\r\n", ["https://x.test/a", "https://x.test/b"]),
        ("tab\thttps://x.test/a\tend", ["https://x.test/a"]),
        # not links
        ("www.x.test and x.test/path", []),
        ("ftp://x.test/ mailto:a@x.test tel:+1555", []),
        ("xhttps://x.test/ and 1http://x.test/", []),
        ("https:// and http://", []),
        ("https://x.test/?u={{id}} and https://x.test/?e=*|EMAIL|*", []),
        ("https://x.test/%zz", []),
        ("`https://x.test/code`", ["https://x.test/code"]),
        # a non-ASCII run is never cut short into another URL: left alone entirely
        ("https://de.wikipedia.org/wiki/Stra\u00dfe", []),
        ("\u8a73\u7d30\u306fhttps://x.test/a\u3092\u3054\u89a7\u304f\u3060\u3055\u3044", []),
        ("\u8a73\u7d30 https://x.test/a \u3092", ["https://x.test/a"]),
        ("\u201chttps://x.test/a\u201d", ["https://x.test/a"]),
        ("\u00abhttps://x.test/a\u00bb.", ["https://x.test/a"]),
        ("https://x.test/a\u3002", ["https://x.test/a"]),
    ],
)
def test_find_urls(text: str, urls: list[str]) -> None:
    assert [text[start:end] for start, end in find_urls(text)] == urls
