from __future__ import annotations

import pytest

from relay.instrument.links import decide, is_trackable, link_origin, opts_out, parse_ses_tags


@pytest.mark.parametrize(
    "url",
    [
        "http://x.test",
        "https://x.test/",
        "HTTPS://X.TEST/Path",
        "https://x.test:8080/p?q=1#frag",
        "https://[2001:db8::1]:443/",
        "https://x.test/?a[]=1&a[]=2",
        "https://x.test/a%20b?q=%C3%A9",
        "https://medium.example/@user/post-1",
        "https://x.test/?redirect=https://y.test/&x=(1)",
        "https://x.test/#/route?x=1",
        "https://x.test:/",
    ],
)
def test_trackable(url: str) -> None:
    assert is_trackable(url)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "x.test",
        "www.x.test",
        "//x.test/path",
        "ftp://x.test/",
        "mailto:a@x.test",
        "tel:+15555550123",
        "sms:+15555550123",
        "#top",
        "/relative/path",
        "javascript:alert(1)",
        "http://",
        "https:///path",
        "http:/x.test",
        "https://x.test/?name=John Doe",  # unencoded space: not RFC 3986 (SES leaves it)
        "{{url}}",
        "https://x.test/?u={{id}}",
        "*|UNSUB|*",
        "https://x.test/?e=*|EMAIL|*",
        "%%unsub%%",
        "{unsub}",
        "${url}",
        "<%= url %>",
        "https://x.test/%zz",
        "https://x.test/100%",
        "https://ex ample.test/",
        "https://x.test/stra\u00dfe",  # an IRI is not an RFC 3986 URL
        "https://x.test:abc/",
        "https://a@b@x.test/",
        "https://[zz]/",
        "https://[::1]x/",
        "https://x.test/<",
        'https://x.test/"',
        "https://x.test/a\\b",
        "https://x.test/a^b",
        "https://x.test/a`b",
        "https://x.test/a|b",
        "https://x.test/\t",
        # credentials: a redirect would carry them in the token
        "https://user:pw@x.test:8080/p?q=1#frag",
        "http://user@x.test",
        "https://@x.test/",
        "https://:@x.test/",
    ],
)
def test_not_trackable(url: str) -> None:
    assert not is_trackable(url)


@pytest.mark.parametrize(
    ("value", "tags"),
    [
        (None, {}),
        ("", {}),
        ("product:book;genre:fiction;", {"product": ["book"], "genre": ["fiction"]}),
        ("product:book;genre:fiction", {"product": ["book"], "genre": ["fiction"]}),
        (" a : 1 ; b:2 ;", {"a": ["1"], "b": ["2"]}),
        ("k:v;k:w;k:v", {"k": ["v", "w"]}),
        ("Under_score-dash:Val-1_2", {"Under_score-dash": ["Val-1_2"]}),
        # invalid pairs are dropped, valid ones kept (SES: only A-Za-z0-9_- allowed)
        ("bad tag:x;ok:fine", {"ok": ["fine"]}),
        ("k:v v;k2:v2", {"k2": ["v2"]}),
        ("k:v:w", {}),
        ("novalue;:noname;k:", {}),
        ("caf\u00e9:x", {}),
        ("k:" + "v" * 256, {"k": ["v" * 256]}),
        ("k:" + "v" * 257, {}),
    ],
)
def test_parse_ses_tags(value: str | None, tags: dict[str, list[str]]) -> None:
    assert parse_ses_tags(value) == tags


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ([("href", "https://x.test/")], False),
        ([("ses:no-track", None)], True),
        ([("ses:no-track", "")], True),
        ([("clicktracking", "off")], True),
        ([("clicktracking", "OFF")], True),
        ([("clicktracking", "on")], False),
        ([("data-pm-no-track", None)], True),
        ([("data-msys-clicktrack", "0")], True),
        ([("data-msys-clicktrack", "1")], False),
        ([("disable-tracking", "true")], True),
        ([("disable-tracking", "false")], False),
        ([("mc:disable-tracking", None)], True),
        ([("ses:tags", "a:b")], False),
    ],
)
def test_opts_out(attributes: list[tuple[str, str | None]], expected: bool) -> None:
    assert opts_out(attributes) is expected


def test_decide() -> None:
    policy = decide(" https://x.test/a\n", [("ses:tags", "a:b")])
    assert (policy.url, policy.tags, policy.opted_out, policy.tracked) == (
        "https://x.test/a",
        {"a": ["b"]},
        False,
        True,
    )
    opted = decide("https://x.test/a", [("ses:no-track", None)])
    assert (opted.url, opted.tracked) == ("https://x.test/a", False)  # the URL is kept for the text-part rule
    assert not decide(None, []).tracked
    assert not decide("mailto:a@x.test", []).tracked


@pytest.mark.parametrize(
    ("href", "url"),
    [
        ("https://x.test/", "https://x.test/"),
        (" \x00https://x.test/\x1f\x7f", None),  # DEL is not a C0 control: not stripped
        ("\x01\x1f https://x.test/a \x0b", "https://x.test/a"),
        ("https://x.\ttest/a\nb\rc", "https://x.test/abc"),
        ("https://x.test/a\fb", None),  # form feed is stripped only at the ends
        ("\fhttps://x.test/\f", "https://x.test/"),
        ("https://x.test/a b", None),
    ],
)
def test_href_is_cleaned_as_the_url_parser_does(href: str, url: str | None) -> None:
    assert decide(href, []).url == url


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://x.test/a?secret=1", "https://x.test"),
        ("HTTP://user:pw@X.test:8080/a", "http://X.test:8080"),
        ("https://[2001:db8::1]:443?q", "https://[2001:db8::1]:443"),
        ("https://x.test#f", "https://x.test"),
    ],
)
def test_origin_for_notes(url: str, origin: str) -> None:
    assert link_origin(url) == origin
