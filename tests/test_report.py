# relay.report is pure: documents in, text out. Byte-exact tables.
from __future__ import annotations

import pytest

from relay import report
from relay.stats import COUNT_KEYS


@pytest.mark.parametrize("value, text", [
    (None, ""),
    (3, "3"),
    ("Mozilla/5.0 (X11)", "Mozilla/5.0 (X11)"),
    ("evil\x1b[2J\rUA", "evil\\x1b[2J\\rUA"),  # no terminal escapes from a stranger's user agent
    ("line\nbreak\ttab", "line\\nbreak\\ttab"),
    ("caf\u00e9 \u2013 ok", "caf\u00e9 \u2013 ok"),
])
def test_clean(value: object, text: str) -> None:
    assert report.clean(value) == text


@pytest.mark.parametrize("rate, text", [(None, "-"), (0.0, "0.0%"), (1.0, "100.0%"), (8 / 9, "88.9%")])
def test_percent(rate: float | None, text: str) -> None:
    assert report.percent(rate) == text


def test_table_aligns_labels_left_numbers_right() -> None:
    assert report.table(["Event", "Count"], [["Send", 4], ["DeliveryDelay", 12]]) == [
        "Event          Count",
        "Send               4",
        "DeliveryDelay     12",
    ]
    assert report.table(["A", "B", "C"], [["x", "long text", 1]], "<<>") == [
        "A  B          C",
        "x  long text  1",
    ]


def test_stats_text() -> None:
    doc = {
        "since": "2026-11-22T00:00:00.000Z", "until": "2026-11-29T00:00:00.000Z", "configuration_set": "",
        "counts": {k: 0 for k in COUNT_KEYS} | {"send": 2, "delivery": 3, "open": 1},
        "recipients": 3, "unique": {"open": 1, "click": 0},
        "rates": {"delivery": 1.0, "bounce": 0.0, "complaint": 0.0, "open": None, "click": None},
        "top_links": [], "link_tags": [{"name": "slot", "value": "hero", "clicks": 0}],
        "series": [{"start": "2026-11-22T00:00:00.000Z", "counts": {k: 0 for k in COUNT_KEYS} | {"send": 2}}],
    }
    text = report.stats_text(doc, tag=("campaign", "spring"))
    lines = text.splitlines()
    assert lines[0] == ("2026-11-22T00:00:00.000Z to 2026-11-29T00:00:00.000Z, mail without a configuration set, "
                        "tag campaign=spring")
    assert lines[2:13] == ["Event              Count", "Send                   2", "Delivery               3",
                           "DeliveryDelay          0", "Bounce                 0", "Reject                 0",
                           "Complaint              0", "Rendering Failure      0", "Open                   1",
                           "Click                  0", "Subscription           0"]
    assert "Open            -" in lines and "Delivery   100.0%" in lines and "Top links: none clicked" in lines
    assert "slot=hero       0" in lines
    assert lines[-2].split() == ["Start", "Send", "Delivery", "DeliveryDelay", "Bounce", "Reject", "Complaint",
                                 "Rendering", "Failure", "Open", "Click", "Subscription"]
    assert lines[-1].split() == ["2026-11-22T00:00:00.000Z", "2", "0", "0", "0", "0", "0", "0", "0", "0", "0"]


def test_timeline_rows() -> None:
    mail = {"timestamp": "2026-11-29T10:00:00.000Z", "messageId": "m"}
    assert report.timeline_row({"eventType": "Send", "mail": mail, "send": {}}) == [
        "2026-11-29T10:00:00.000Z", "Send", ""]
    click = {"eventType": "Click", "mail": mail, "click": {
        "timestamp": "2026-11-29T10:05:00.000Z", "ipAddress": "192.0.2.1", "userAgent": "UA\x07",
        "link": "https://example.com/a", "linkTags": {"slot": ["hero"]}, "recipient": "a@example.org"}}
    assert report.timeline_row(click) == [
        "2026-11-29T10:05:00.000Z", "Click", "https://example.com/a  192.0.2.1  UA\\x07  tags slot=hero"]
    failure = {"eventType": "Rendering Failure", "mail": mail, "failure": {"errorMessage": "bad MIME"}}
    assert report.timeline_row(failure) == ["2026-11-29T10:00:00.000Z", "Rendering Failure", "bad MIME"]


def test_messages_text_empty() -> None:
    assert report.messages_text([]) == "No messages."


def test_dead_letters_text_aligns_text_left_and_attempts_right() -> None:
    rows = [{"dead_at": "2026-11-30T00:24:36.600Z", "destination": "default/snshook", "event_id": "e-1",
             "message_id": "0000-m", "attempts": 12, "reason": "HTTP 500"},
            {"dead_at": "2026-11-30T00:24:43.641Z", "destination": "app/hook", "event_id": "event-22",
             "message_id": "0000-message", "attempts": 3, "reason": "cannot connect: Connection refused"}]
    assert report.dead_letters_text(rows).splitlines() == [
        "Dead since                Destination      Event     Message       Attempts  Last refusal",
        "2026-11-30T00:24:36.600Z  default/snshook  e-1       0000-m              12  HTTP 500",
        "2026-11-30T00:24:43.641Z  app/hook         event-22  0000-message         3  cannot connect: Connection refused",
    ]
    assert report.dead_letters_text([]) == "No dead letters."
