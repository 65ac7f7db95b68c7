# The admin package's pure pieces, table-driven: timeline rows from SES records, the
# preview's link target, loopback Host names, and query parameters.
from __future__ import annotations

from datetime import UTC, datetime

import pytest

from relay.admin import params, timeline
from relay.admin.auth import Auth, loopback_host
from relay.admin.pages import when
from relay.admin.preview import body_parts, open_links_outside

MAIL = {"timestamp": "2026-11-29T10:00:00.000Z", "messageId": "m"}


@pytest.mark.parametrize("record, expected", [
    ({"eventType": "Send", "mail": MAIL, "send": {}},
     {"type": "Send", "time": "2026-11-29T10:00:00.000Z", "ip": "", "user_agent": "", "link": "", "detail": ""}),
    ({"eventType": "Delivery", "mail": MAIL, "delivery": {"timestamp": "2026-11-29T10:00:01.000Z",
                                                          "smtpResponse": "250 2.0.0 Ok"}},
     {"type": "Delivery", "time": "2026-11-29T10:00:01.000Z", "ip": "", "user_agent": "", "link": "",
      "detail": "250 2.0.0 Ok"}),
    ({"eventType": "Bounce", "mail": MAIL, "bounce": {"timestamp": "t", "bounceType": "Permanent",
                                                      "bounceSubType": "General",
                                                      "bouncedRecipients": [{"diagnosticCode": "smtp; 550 no"}]}},
     {"type": "Bounce", "time": "t", "ip": "", "user_agent": "", "link": "", "detail": "Permanent/General smtp; 550 no"}),
    ({"eventType": "DeliveryDelay", "mail": MAIL, "deliveryDelay": {
        "timestamp": "t", "delayType": "TransientCommunicationFailure",
        "delayedRecipients": [{"diagnosticCode": "smtp; 451 later"}]}},
     {"type": "DeliveryDelay", "time": "t", "ip": "", "user_agent": "", "link": "",
      "detail": "TransientCommunicationFailure smtp; 451 later"}),
    ({"eventType": "Open", "mail": MAIL, "open": {"timestamp": "t", "ipAddress": "192.0.2.1", "userAgent": "UA"}},
     {"type": "Open", "time": "t", "ip": "192.0.2.1", "user_agent": "UA", "link": "", "detail": ""}),
    ({"eventType": "Click", "mail": MAIL, "click": {"timestamp": "t", "ipAddress": "192.0.2.1", "userAgent": "UA",
                                                    "link": "https://e.com/", "linkTags": {"b": ["2"], "a": ["1", "x"]}}},
     {"type": "Click", "time": "t", "ip": "192.0.2.1", "user_agent": "UA", "link": "https://e.com/",
      "detail": "a=1,x, b=2"}),
    ({"eventType": "Rendering Failure", "mail": MAIL, "failure": {"errorMessage": "bad charset"}},
     {"type": "Rendering Failure", "time": "2026-11-29T10:00:00.000Z", "ip": "", "user_agent": "", "link": "",
      "detail": "bad charset"}),
])
def test_timeline_row(record: dict, expected: dict) -> None:
    assert timeline.row(record) == expected


@pytest.mark.parametrize("html, expected", [
    ("<html><head><title>x</title></head><body>", '<html><head><base target="_blank"><title>x</title></head><body>'),
    ('<HEAD lang="en">', '<HEAD lang="en"><base target="_blank">'),
    ("<header>hi</header>", '<base target="_blank"><header>hi</header>'),
    ("<p>no head</p>", '<base target="_blank"><p>no head</p>'),
])
def test_preview_links_open_outside(html: str, expected: str) -> None:
    assert open_links_outside(html) == expected


def test_body_parts_prefers_html_and_decodes_quoted_printable() -> None:
    raw = (b"Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
           b"--b\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
           b"<a href=3D\"https://e.com/\">caf=C3=A9</a>\r\n--b--\r\n")
    copy = body_parts(raw)
    assert copy.html is not None and copy.html.strip() == '<a href="https://e.com/">café</a>'
    assert copy.text is not None and copy.text.strip() == "plain"


@pytest.mark.parametrize("host, ok", [
    ("127.0.0.1:8025", True), ("127.1.2.3", True), ("localhost:8025", True), ("LOCALHOST", True),
    ("app.localhost:1", True), ("[::1]:8025", True), ("::1", True), ("evil.example", False),
    ("evil.example:8025", False), ("10.0.0.1:8025", False), ("127.0.0.1.evil.example", False), ("", False),
])
def test_loopback_host(host: str, ok: bool) -> None:
    assert loopback_host(host) is ok


def test_token_check_is_exact() -> None:
    auth = Auth("0123456789abcdef")
    assert auth.check_token("0123456789abcdef")
    assert not auth.check_token("0123456789abcde") and not auth.check_token("") and not Auth(None).check_token("")


NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)


@pytest.mark.parametrize("query, error", [
    ({"since": "soon"}, "since: expected a duration"),
    ({"until": "x"}, "until: expected a duration"),
    ({"since": "1h", "until": "2h"}, "must be before until"),
    ({"by": "week"}, "by must be hour or day"),
    ({"tag": "x"}, "tag must be NAME=VALUE"),
    ({"tag": "=v"}, "tag must be NAME=VALUE"),
])
def test_bad_stats_parameters(query: dict, error: str) -> None:
    with pytest.raises(params.ParamError, match=error):
        params.stats_args(query, NOW)


def test_stats_parameters() -> None:
    args = params.stats_args({"since": "24h", "by": "hour", "tag": "campaign=a=b", "configuration_set": ""}, NOW)
    assert args["configuration_set"] == "" and args["by"] == "hour" and args["tag"] == ("campaign", "a=b")
    assert args["period"].since == datetime(2026, 11, 28, 12, tzinfo=UTC) and args["period"].until == NOW
    assert params.stats_args({}, NOW)["configuration_set"] is None  # absent: every set


@pytest.mark.parametrize("value, ok", [("open,click", True), ("Open, Rendering Failure", True), ("opens", False)])
def test_event_types(value: str, ok: bool) -> None:
    if ok:
        assert params.types({"type": value})
    else:
        with pytest.raises(params.ParamError):
            params.types({"type": value})


@pytest.mark.parametrize("value, expected", [
    ("2026-11-29T20:31:30.654Z", "2026-11-29 20:31:30.654"), ("2026-11-29T20:31:30+00:00", "2026-11-29 20:31:30"),
])
def test_when(value: str, expected: str) -> None:
    assert when(value) == expected
