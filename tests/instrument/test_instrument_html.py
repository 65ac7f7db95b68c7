from __future__ import annotations

import pytest

from relay.instrument import Prepared, TrackingOptions, prepare
from relay.instrument.html import scan, unescape_attribute
from relay.instrument.template import pixel
from tests.instrument.faithful import CLICK, OPEN, assert_faithful, render_sentinels

BOTH = TrackingOptions(open=True, click=True)
CLICKS = TrackingOptions(open=False, click=True)
PIXEL = pixel(OPEN)


def html_message(body: str, extra: str = "") -> bytes:
    head = "From: a@x.test\r\nTo: b@y.test\r\nContent-Type: text/html; charset=utf-8\r\n" + extra + "\r\n"
    return (head + body).encode("utf-8")


def instrument(body: str, options: TrackingOptions = CLICKS) -> tuple[Prepared, str]:
    raw = html_message(body)
    prepared = prepare(raw, options)
    assert prepared.failure is None
    out = render_sentinels(prepared)
    assert_faithful(raw, out, prepared)
    return prepared, out.split(b"\r\n\r\n", 1)[1].decode("utf-8")


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("https://x.test/?a=1&amp;b=2", "https://x.test/?a=1&b=2"),
        ("?a=1&amp;amp;b=2", "?a=1&amp;b=2"),  # decoded exactly once
        ("?a=1&#38;b=2&#x26;c=3", "?a=1&b=2&c=3"),
        ("?a=1&copy=2", "?a=1&copy=2"),  # legacy ref before '=': literal in attributes
        ("?a=1&copy;=2&copy-x", "?a=1\u00a9=2\u00a9-x"),
        ("?a=1&notit;b&amp", "?a=1&notit;b&"),
        ("?x=&bogus;&", "?x=&bogus;&"),
        ("&#128;&#0;", "\u20ac\ufffd"),
        ("plain", "plain"),
    ],
)
def test_unescape_attribute(raw: str, decoded: str) -> None:
    assert unescape_attribute(raw) == decoded


def test_scan_finds_attribute_spans() -> None:
    text = '<p>\n<A  HREF="https://x.test/?a&amp;b" title="a>b"\n ses:no-track ses:tags=\'k:v\' x=y/>t</a>'
    (anchor,) = scan(text).anchors
    assert [(a.name, a.value, a.quote) for a in anchor.attributes] == [
        ("href", "https://x.test/?a&b", '"'),
        ("title", "a>b", '"'),
        ("ses:no-track", None, ""),
        ("ses:tags", "k:v", "'"),
        ("x", "y/", ""),
    ]
    href, _, no_track, tags, _ = anchor.attributes
    assert text[href.lead : href.end] == '  HREF="https://x.test/?a&amp;b"'
    assert text[href.value_start : href.end] == '"https://x.test/?a&amp;b"'
    assert text[no_track.lead : no_track.end] == "\n ses:no-track"
    assert text[tags.lead : tags.end] == " ses:tags='k:v'"


def test_a_wrapped_href_is_tracked_without_its_line_break() -> None:
    prepared, out = instrument('<a href="https://x.test/a?b=1&amp;\r\nc=2">x</a>')
    assert prepared.links[0].url == "https://x.test/a?b=1&c=2"
    assert out == f'<a href="{CLICK.format(0)}">x</a>'


@pytest.mark.parametrize(
    ("url", "written"),
    [
        ("https://trk.test/c/AbC-_1", "https://trk.test/c/AbC-_1"),
        ("https://trk.test/c/a&b", "https://trk.test/c/a&amp;b"),
        ("https://trk.test/c/a=b", '"https://trk.test/c/a=b"'),  # these need quotes (HTML §13.1.2.3)
        ("https://trk.test/c/a'b", '"https://trk.test/c/a\'b"'),
        ('https://trk.test/c/a"b', "https://trk.test/c/a&quot;b"),
        ("https://trk.test/c/a`b", '"https://trk.test/c/a`b"'),
        ("https://trk.test/c/a<b>", '"https://trk.test/c/a<b>"'),
        ("https://trk.test/c/a b", "https://trk.test/c/a%20b"),
    ],
)
def test_unquoted_href_gets_quotes_only_when_its_value_needs_them(url: str, written: str) -> None:
    raw = html_message("<a href=https://x.test/>x</a>")
    out = prepare(raw, CLICKS).render(None, [url])
    assert out == html_message(f"<a href={written}>x</a>")


def test_amp_is_decoded_once_and_the_attribute_requoted() -> None:
    prepared, out = instrument('<a href="https://x.test/?a=1&amp;b=2&amp;amp;c">x</a>')
    assert prepared.links[0].url == "https://x.test/?a=1&b=2&amp;c"
    assert out == f'<a href="{CLICK.format(0)}">x</a>'


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('<a href="https://x.test/">', '<a href="{0}">'),
        ("<a href='https://x.test/'>", "<a href='{0}'>"),
        ("<a href=https://x.test/>", "<a href={0}>"),  # unquoted stays unquoted
        ("<a href=https://x.test/ title=t>", "<a href={0} title=t>"),
        ("<a href = https://x.test/&#9;>", "<a href = {0}>"),
        # the URL parser removes ASCII tab and newline, and strips C0 controls and space
        ('<a href="https://x.te\tst/">', '<a href="{0}">'),
        ('<a href="https://x.test\r\n/">', '<a href="{0}">'),
        ('<a href="\x01 https://x.test/\x1f ">', '<a href="{0}">'),
        ("<a href='https:/&#10;/x.test/'>", "<a href='{0}'>"),
        ('<a class="b" href = "https://x.test/" id=c>', '<a class="b" href = "{0}" id=c>'),
        ('<a href=" https://x.test/\n">', '<a href="{0}">'),  # browsers strip the whitespace
        ('<area shape="rect" href="https://x.test/">', '<area shape="rect" href="{0}">'),
        ('<a href="https://x.test/" />', '<a href="{0}" />'),
        ('<A HREF="https://x.test/">', '<A HREF="{0}">'),
        ('<a href="https://x.test/" href="https://y.test/">', '<a href="{0}" href="https://y.test/">'),
    ],
)
def test_href_forms(source: str, expected: str) -> None:
    prepared, out = instrument(source + "x</a>")
    assert prepared.links[0].url == "https://x.test/"
    assert out == expected.format(CLICK.format(0)) + "x</a>"


@pytest.mark.parametrize(
    "href",
    [
        "mailto:a@x.test",
        "tel:+15555550123",
        "sms:+15555550123",
        "#top",
        "/relative",
        "relative.html",
        "javascript:void(0)",
        "",
        "{{url}}",
        "*|URL|*",
        "%%url%%",
        "{url}",
        "[[url]]",
        "www.x.test",
        "https://x.test/?name=John Doe",
        "ftp://x.test/file",
        "data:text/html,hi",
        "cid:logo@x.test",
        "https://x.test/a\fb",  # form feed is not removed by the URL parser
        "https://x.test/a b\nc",
        # credentials would be exposed in the token (and in the redirect)
        "https://user:pass@x.test/",
        "http://user@x.test",
        "http://us\ter:p@x.test/",
    ],
)
def test_skipped_hrefs_are_left_alone(href: str) -> None:
    body = f'<a href="{href}">x</a>'
    prepared = prepare(html_message(body), CLICKS)
    assert prepared.failure is None and prepared.links == ()
    assert prepared.render(None, []) == html_message(body)


@pytest.mark.parametrize(
    ("markup", "urls"),
    [
        ("<![ x [ y ]]>", ["https://x.test/"]),
        ("<![foo<a href='https://x.test/foo'>", ["https://x.test/"]),  # the bogus comment ends at '>'
    ],
)
def test_marked_sections_are_bogus_comments(markup: str, urls: list[str]) -> None:
    prepared, _ = instrument(markup + '<a href="https://x.test/">x</a>', BOTH)
    assert [link.url for link in prepared.links] == urls


def test_missing_href_and_other_tags() -> None:
    body = '<a name="top">x</a><link href="https://x.test/css"><img src="https://x.test/i.png"><base href="https://x.test/">'
    prepared = prepare(html_message(body), CLICKS)
    assert prepared.links == ()


def test_comments_scripts_and_outlook_vml_are_untouched() -> None:
    body = (
        '<!--[if mso]><v:roundrect href="https://x.test/vml"><a href="https://x.test/mso">x</a></v:roundrect><![endif]-->'
        "<script>var s = '<a href=\"https://x.test/js\">';</script>"
        '<style>a[href="https://x.test/css"] { color: red }</style>'
        '<!--[if !mso]><!--><a href="https://x.test/button">b</a><!--<![endif]-->'
        '<![if !mso]><a href="https://x.test/downlevel">d</a><![endif]>'
    )
    prepared, _ = instrument(body)
    assert [link.url for link in prepared.links] == ["https://x.test/button", "https://x.test/downlevel"]


@pytest.mark.parametrize(
    ("attribute", "tracked"),
    [
        ("ses:no-track", False),
        ('ses:no-track=""', False),
        ("clicktracking=off", False),
        ('clicktracking="OFF"', False),
        ("data-pm-no-track", False),
        ('data-msys-clicktrack="0"', False),
        ("disable-tracking=true", False),
        ("mc:disable-tracking", False),
        ('clicktracking="on"', True),
        ('data-msys-clicktrack="1"', True),
        ('disable-tracking="false"', True),
        ('ses:tags="a:b"', True),
    ],
)
def test_opt_outs_are_honoured_and_stripped(attribute: str, tracked: bool) -> None:
    for body, stripped in [
        (f'<a {attribute} href="https://x.test/">x</a>', '<a href="{}">x</a>'),
        (f'<a href="https://x.test/" {attribute}>x</a>', '<a href="{}">x</a>'),
        (f'<a\n\t{attribute}\n\thref="https://x.test/" class=c>x</a>', '<a\n\thref="{}" class=c>x</a>'),
    ]:
        prepared, out = instrument(body)
        assert len(prepared.links) == (1 if tracked else 0)
        assert out == stripped.format(CLICK.format(0) if tracked else "https://x.test/")


def test_ses_tags_attach_to_their_link() -> None:
    prepared, out = instrument(
        '<a ses:tags="product:book;genre:fiction;" href="https://x.test/1">1</a>'
        "<a href=\"https://x.test/2\" ses:tags='bad tag:x;ok:fine;also bad:y'>2</a>"
        '<a href="https://x.test/3">3</a>'
        '<a ses:tags="k:v" href="mailto:a@x.test">m</a>'
    )
    assert [link.tags for link in prepared.links] == [
        {"product": ["book"], "genre": ["fiction"]},
        {"ok": ["fine"]},
        {},
    ]
    assert "ses:" not in out
    assert '<a href="mailto:a@x.test">m</a>' in out


def test_control_attributes_are_stripped_even_without_click_tracking() -> None:
    raw = html_message('<a ses:no-track href="https://x.test/">x</a><a href="https://y.test/" ses:tags="a:b">y</a>')
    prepared = prepare(raw, TrackingOptions(open=True, click=False))
    assert prepared.links == ()
    out = prepared.render(None, [])
    assert out == html_message('<a href="https://x.test/">x</a><a href="https://y.test/">y</a>')


def test_nothing_changes_when_both_options_are_off() -> None:
    raw = html_message('<a ses:no-track href="https://x.test/">x</a>{{ses:openTracker}}</body>')
    prepared = prepare(raw, TrackingOptions(open=False, click=False))
    assert (prepared.failure, prepared.links, prepared.has_pixel) == (None, (), False)
    assert prepared.render("https://trk.test/o/x", []) == raw


def test_link_cap_keeps_the_first_250() -> None:
    body = "".join(f'<a ses:tags="n:{i}" href="https://x.test/{i}">{i}</a>\n' for i in range(300))
    prepared, out = instrument(body)
    assert [link.url for link in prepared.links] == [f"https://x.test/{i}" for i in range(250)]
    assert f'<a href="{CLICK.format(249)}">249</a>' in out
    assert '<a href="https://x.test/250">250</a>' in out  # untracked, but ses:tags stripped
    assert "ses:tags" not in out


def test_link_cap_counts_across_parts_in_walk_order() -> None:
    text = "\r\n".join(f"https://t.test/{i}" for i in range(200))
    html = "".join(f'<a href="https://h.test/{i}">{i}</a>' for i in range(100))
    raw = (
        "Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n"
        f"{text}\r\n--b\r\nContent-Type: text/html\r\n\r\n{html}\r\n--b--\r\n"
    ).encode()
    prepared = prepare(raw, TrackingOptions(open=False, click=True, max_links=250))
    urls = [link.url for link in prepared.links]
    assert urls == [f"https://t.test/{i}" for i in range(200)] + [f"https://h.test/{i}" for i in range(50)]
    assert_faithful(raw, render_sentinels(prepared), prepared)
    assert prepare(raw, TrackingOptions(open=False, click=True, max_links=0)).links == ()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("<html><body><p>Hi</p></body></html>", "<html><body><p>Hi</p>{px}</body></html>"),
        ("<p>a</p></BODY ></HTML>", "<p>a</p>{px}</BODY ></HTML>"),
        ("<p>a</p></body><p>b</p></body>\n", "<p>a</p></body><p>b</p>{px}</body>\n"),  # the last one
        ("<p>no body end</p>\r\n\r\n", "<p>no body end</p>{px}\r\n\r\n"),
        ("<p>a</p><!-- </body> --></html>", "<p>a</p><!-- </body> --></html>{px}"),
        ("<script>'</body>'</script>", "<script>'</body>'</script>{px}"),
        ("", "{px}"),
        # {{ses:openTracker}}: the first outside comments, others removed
        ("<p>{{ses:openTracker}}a</p>{{ses:openTracker}}</body>", "<p>{px}a</p></body>"),
        ("<!--{{ses:openTracker}}--><p>{{ ses:openTracker }}</p>", "<!--{{ses:openTracker}}--><p>{px}</p>"),
    ],
)
def test_pixel_placement(body: str, expected: str) -> None:
    prepared, out = instrument(body, TrackingOptions(open=True, click=False))
    assert prepared.has_pixel
    assert out == expected.replace("{px}", PIXEL)


def test_placeholder_inside_a_removed_attribute_goes_with_it() -> None:
    body = '<a href="https://x.test/" title=t ses:tags="{{ses:openTracker}}">x</a><p>{{ses:openTracker}}</p>'
    _, out = instrument(body, BOTH)
    assert out == f'<a href="{CLICK.format(0)}" title=t>x</a><p>{PIXEL}</p>'
    _, out = instrument('<a ses:tags="{{ses:openTracker}}" href="https://x.test/">x</a>', BOTH)
    assert out == f'<a href="{CLICK.format(0)}">x</a>{PIXEL}'


def test_placeholders_are_removed_without_open_tracking() -> None:
    _, out = instrument("<p>{{ses:openTracker}}</p>{{ses:openTracker}}", CLICKS)
    assert out == "<p></p>"
    prepared = prepare(html_message("<p>{{ses:openTracker}}</p>"), BOTH)
    assert prepared.render(None, []) == html_message("<p></p>")  # no open URL: no pixel


def test_pixel_markup() -> None:
    assert (
        f'<img src="{OPEN}" width="1" height="1" alt="" border="0" style="height:1px!important;'
        "width:1px!important;border:0!important;margin:0!important;padding:0!important;"
        'display:block;overflow:hidden" />'
    ) == PIXEL
    assert "display:none" not in PIXEL


def test_every_html_part_gets_one_pixel() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>1</p>\r\n"
        b"--b\r\nContent-Type: text/html\r\n\r\n<p>2</p>\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b--\r\n"
    )
    prepared = prepare(raw, BOTH)
    out = render_sentinels(prepared)
    assert out.count(OPEN.encode()) == 2
    assert assert_faithful(raw, out, prepared).pixels == 2


def test_text_only_message_gets_no_pixel() -> None:
    raw = b"Content-Type: text/plain\r\n\r\nhello https://x.test/\r\n"
    prepared = prepare(raw, TrackingOptions(open=True, click=False))
    assert not prepared.has_pixel
    assert prepared.render(OPEN, []) == raw


def test_opt_out_in_html_covers_the_same_url_in_text() -> None:
    raw = (
        b"Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n"
        b"Login: https://x.test/login?t=1 Shop: https://x.test/shop\r\n"
        b"--b\r\nContent-Type: text/html\r\n\r\n"
        b'<a ses:no-track href="https://x.test/login?t=1">in</a> <a href="https://x.test/shop">shop</a>\r\n--b--\r\n'
    )
    prepared = prepare(raw, CLICKS)
    assert [link.url for link in prepared.links] == ["https://x.test/shop", "https://x.test/shop"]
    assert b"Login: https://x.test/login?t=1 Shop: https://trk.test/c/0" in render_sentinels(prepared)


def test_odd_markup_does_not_confuse_offsets() -> None:
    body = (
        "<p title='<a href=\"https://no.test/\">'>x</p>\n"
        '<a title="x" href="https://x.test/1"title=\'y\'>1</a>'
        '<a/href="https://x.test/2">2</a>'
        "<a\r\nhref=\r\nhttps://x.test/3\r\n>3</a>"
        '<div <a href="https://x.test/4">4</div>'
        '<a href="https://x.test/5"\n\n\n>5</a><a href="https://x.test/6'
    )
    prepared, out = instrument(body)
    # <div <a ...> is a div (with an attribute named "<a"), as in browsers; the
    # unterminated last tag is text.
    assert [link.url for link in prepared.links] == [f"https://x.test/{n}" for n in (1, 2, 3, 5)]
    assert "<a\r\nhref=\r\nhttps://trk.test/c/2\r\n>3</a>" in out
