"""The HTML scanner follows the HTML standard's tokenizer (§13.2.5) where it decides what is
markup: raw-text and RCDATA elements, comment ends, bogus comments; and the pixel stays
out of Outlook conditional regions."""

from __future__ import annotations

import pytest

from relay.instrument import TrackingOptions, prepare
from relay.instrument.html import scan
from relay.instrument.template import pixel
from tests.instrument.faithful import OPEN, assert_faithful, render_sentinels

CLICKS = TrackingOptions(open=False, click=True)
PIXELS = TrackingOptions(open=True, click=False)
PIXEL = pixel(OPEN)


def html_message(body: str) -> bytes:
    return ("From: a@x.test\r\nTo: b@y.test\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + body).encode()


def tracked(body: str) -> list[str]:
    raw = html_message(body)
    prepared = prepare(raw, CLICKS)
    assert prepared.failure is None
    assert_faithful(raw, render_sentinels(prepared), prepared)
    return [link.url.rpartition("/")[2] for link in prepared.links]


def with_pixel(body: str) -> str:
    raw = html_message(body)
    prepared = prepare(raw, PIXELS)
    assert prepared.failure is None and prepared.has_pixel
    out = render_sentinels(prepared)
    assert assert_faithful(raw, out, prepared).pixels == 1
    return out.split(b"\r\n\r\n", 1)[1].decode().replace(PIXEL, "{px}")


# --- 1. raw text and RCDATA elements (HTML §13.2.6.4.4 / §13.2.6.4.7 switch the tokenizer) ---


@pytest.mark.parametrize(
    ("body", "urls"),
    [
        ('<textarea><a href="https://x.test/ta">t</a></textarea>', []),
        ('<title><a href="https://x.test/ti">t</a></title>', []),
        ('<xmp><a href="https://x.test/xm">t</a></xmp>', []),
        ('<iframe><a href="https://x.test/if">t</a></iframe>', []),
        ('<noembed><a href="https://x.test/ne">t</a></noembed>', []),
        ('<noframes><a href="https://x.test/nf">t</a></noframes>', []),
        ('<style><a href="https://x.test/st">t</a></style>', []),
        ('<script><a href="https://x.test/sc">t</a></script>', []),
        ('<plaintext><a href="https://x.test/pt">t</a></plaintext><a href="https://x.test/pt2">', []),
        # the end tag: case-insensitive, may carry attributes; anything else is text
        ('<TEXTAREA><a href="https://x.test/1"></textarea ><a href="https://x.test/2">', ["2"]),
        ('<textarea></textarea foo="a>b"><a href="https://x.test/3">', ["3"]),
        ('<textarea></textarea/><a href="https://x.test/4">', ["4"]),
        ('<textarea></textareax><a href="https://x.test/5"></textarea><a href="https://x.test/6">', ["6"]),
        ('<textarea></ textarea><a href="https://x.test/7"></textarea>', []),
        ('<title/><a href="https://x.test/8"></title><a href="https://x.test/9">', ["9"]),  # '/>' is ignored
        ('<textarea><!--</textarea>--><a href="https://x.test/10">', ["10"]),  # no comments in RCDATA
        ("<title>&lt;a href=x&gt;</title><a href='https://x.test/11'>", ["11"]),
        # script data escaping (§13.2.5.4, §13.2.5.15-31): a <script> inside <!-- --> needs two end tags
        (
            '<script><!--<script></script><a href="https://x.test/12"></script>--></script><a href="https://x.test/13">',
            ["13"],
        ),
        ('<script><!-- </script><a href="https://x.test/14">', ["14"]),
        ('<script><!--><a href="https://x.test/15"></script><a href="https://x.test/16">', ["16"]),
        ('<script><!--<script>--><a href="https://x.test/17"></script><a href="https://x.test/18">', ["18"]),
        # scripting is off in mail clients, so <noscript> content is rendered as markup
        ('<noscript><a href="https://x.test/ns">n</a></noscript>', ["ns"]),
        ('<head><noscript><a href="https://x.test/nh">n</a></noscript></head>', ["nh"]),
        # in SVG and MathML (foreign content) <title> and <style> are ordinary elements
        ('<svg><title>t</title><a href="https://x.test/sv">s</a></svg>', ["sv"]),
        ('<svg><style></style></svg><a href="https://x.test/sv2">', ["sv2"]),
        ('<math><title>t</title></math><title><a href="https://x.test/m1"></title>', []),
    ],
)
def test_raw_text_elements_are_not_markup(body: str, urls: list[str]) -> None:
    assert tracked(body) == urls


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("<body>x<textarea></body></textarea>", "<body>x<textarea></body></textarea>{px}"),
        ("<title></body></title><body>x</body>", "<title></body></title><body>x{px}</body>"),
        ("<script>'</body>'</script>", "<script>'</body>'</script>{px}"),
        (
            "<p>{{ses:openTracker}}</p><title>{{ses:openTracker}}</title>",
            "<p>{px}</p><title>{{ses:openTracker}}</title>",
        ),
        ("<textarea>{{ses:openTracker}}</textarea>x", "<textarea>{{ses:openTracker}}</textarea>x{px}"),
        # the document ends inside something that is not markup: the pixel goes before it
        ("<p>x</p><plaintext>a</body>", "<p>x</p>{px}<plaintext>a</body>"),
        ("<p>x</p><textarea>a\n", "<p>x</p>{px}<textarea>a\n"),
        ("<p>x</p><!-- unclosed\n", "<p>x</p>{px}<!-- unclosed\n"),
        ('<p>x</p><a href="y', '<p>x</p>{px}<a href="y'),
    ],
)
def test_no_pixel_inside_raw_text(body: str, expected: str) -> None:
    assert with_pixel(body) == expected


def test_a_placeholder_inside_a_kept_attribute_is_not_a_pixel_slot() -> None:
    # The pixel's markup inside an attribute value would break the tag.
    assert with_pixel('<p title="{{ses:openTracker}}">x</p>') == '<p title="{{ses:openTracker}}">x</p>{px}'


# --- 2. comments (§13.2.5.43-52) and bogus comments (§13.2.5.41) ---


@pytest.mark.parametrize(
    ("body", "urls"),
    [
        ('<!-- a --!><a href="https://x.test/y">x</a><!-- b -->', ["y"]),
        ('<!--><a href="https://x.test/1">', ["1"]),  # abrupt closing of empty comment
        ('<!---><a href="https://x.test/2">', ["2"]),
        ('<!----><a href="https://x.test/3">', ["3"]),
        ('<!----!><a href="https://x.test/4">', ["4"]),
        ('<!-- <!--> <a href="https://x.test/5">', ["5"]),  # a nested "<!--" followed by ">" ends it
        ('<!-- a ---><a href="https://x.test/6">', ["6"]),
        ('<!-- a --!--><a href="https://x.test/7">', ["7"]),
        # these do not end a comment
        ('<!-- a -- ><a href="https://x.test/n1">x</a> -->', []),
        ('<!-- a --!-><a href="https://x.test/n2">x</a> -->', []),
        ('<!--!><a href="https://x.test/n3">x</a> -->', []),
        ('<!---!><a href="https://x.test/n4">x</a> -->', []),
        ('<!-- a -!><a href="https://x.test/n5">x</a> -->', []),
        ('<!-- unclosed <a href="https://x.test/n6">x</a>', []),  # EOF in comment: to the end
        # bogus comments run to the first '>'
        ('<?php x ?><a href="https://x.test/8">', ["8"]),
        ('<!x <a href="https://x.test/n7">x</a>', []),
        ('</ x><a href="https://x.test/9">', ["9"]),
        ('</><a href="https://x.test/10">', ["10"]),
        ('<![CDATA[<a href="https://x.test/n8">]]><a href="https://x.test/11">', ["11"]),
        ('<![ x [ y ]]><a href="https://x.test/12">', ["12"]),
        ('<!DOCTYPE html "a>b"><a href="https://x.test/13">', ["13"]),
        # CDATA sections exist only in foreign content
        ('<svg><![CDATA[ <a href="https://x.test/n9"> ]]></svg><a href="https://x.test/14">', ["14"]),
        # '<' not starting a tag is text
        ('a < b <3 <=<a href="https://x.test/15">', ["15"]),
        # EOF in a tag: the tag is dropped
        ('<a href="https://x.test/n10"', []),
        ("<a href='https://x.test/n11'  title=\"x", []),
    ],
)
def test_comments_end_where_browsers_end_them(body: str, urls: list[str]) -> None:
    assert tracked(body) == urls


def test_placeholders_in_comments_are_not_pixel_slots() -> None:
    assert scan("<!-- a --!>{{ses:openTracker}}<!-- {{ses:openTracker}}").placeholders == ((11, 30),)


# --- 5. the pixel outside Outlook conditional regions ---


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # "downlevel-revealed": browsers see the content, Outlook (Word) evaluates the condition
        (
            "<body><p>x</p><!--[if !(gte mso 15)]--></body><!--<![endif]--></html>",
            "<body><p>x</p>{px}<!--[if !(gte mso 15)]--></body><!--<![endif]--></html>",
        ),
        (
            "<body><!--[if !mso]><!-- --><div>x</div>\n</body> <!--<![endif]-->\n</html>",
            "<body>{px}<!--[if !mso]><!-- --><div>x</div>\n</body> <!--<![endif]-->\n</html>",
        ),
        (
            "<body><p>a</p>\n<!--[if !mso]><!--><div>b</div></body><!--<![endif]-->",
            "<body><p>a</p>\n{px}<!--[if !mso]><!--><div>b</div></body><!--<![endif]-->",
        ),
        (
            "<body><p>a</p><![if !mso]><div>b</div></body><![endif]></html>",
            "<body><p>a</p>{px}<![if !mso]><div>b</div></body><![endif]></html>",
        ),
        # nested regions: before the outermost one
        (
            "<p>a</p><!--[if !mso]><!--><div><!--[if !IE]><!--></body><!--<![endif]--></div><!--<![endif]-->",
            "<p>a</p>{px}<!--[if !mso]><!--><div><!--[if !IE]><!--></body><!--<![endif]--></div><!--<![endif]-->",
        ),
        # no </body>, the end of the document inside an unclosed region
        ("<p>a</p><!--[if !mso]><!--><p>b</p>", "<p>a</p>{px}<!--[if !mso]><!--><p>b</p>"),
        # closed regions elsewhere do not matter (MJML, Mailchimp, Litmus boilerplates)
        (
            '<head><!--[if !mso]><!--><meta http-equiv="X-UA-Compatible" content="IE=edge"><!--<![endif]-->'
            "<!--[if mso]><xml><o:OfficeDocumentSettings></o:OfficeDocumentSettings></xml><![endif]--></head>"
            '<body><div><!--[if mso | IE]><table role="presentation"><tr><td><![endif]--><p>x</p>'
            "<!--[if mso | IE]></td></tr></table><![endif]--></div></body></html>",
            '<head><!--[if !mso]><!--><meta http-equiv="X-UA-Compatible" content="IE=edge"><!--<![endif]-->'
            "<!--[if mso]><xml><o:OfficeDocumentSettings></o:OfficeDocumentSettings></xml><![endif]--></head>"
            '<body><div><!--[if mso | IE]><table role="presentation"><tr><td><![endif]--><p>x</p>'
            "<!--[if mso | IE]></td></tr></table><![endif]--></div>{px}</body></html>",
        ),
        (
            "<body><!--[if (gte mso 9)|(IE)]><table><tr><td><![endif]--><p>x</p>"
            "<!--[if (gte mso 9)|(IE)]></td></tr></table><![endif]--></body>",
            "<body><!--[if (gte mso 9)|(IE)]><table><tr><td><![endif]--><p>x</p>"
            "<!--[if (gte mso 9)|(IE)]></td></tr></table><![endif]-->{px}</body>",
        ),
        # a </body> hidden from browsers (downlevel-hidden) is not an end tag at all
        (
            "<p>x</p><!--[if mso]></body><![endif]--></body>",
            "<p>x</p><!--[if mso]></body><![endif]-->{px}</body>",
        ),
        # a stray <![endif]> closes nothing
        ("<!--<![endif]--><p>x</p></body>", "<!--<![endif]--><p>x</p>{px}</body>"),
    ],
)
def test_pixel_stays_out_of_conditional_regions(body: str, expected: str) -> None:
    assert with_pixel(body) == expected
