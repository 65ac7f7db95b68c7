from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.events import records
from relay.events.records import (
    EVENT_TYPE_KEYS,
    BouncedRecipient,
    DelayedRecipient,
    MailInfo,
    iso,
    mail_info,
    mail_object,
)

ACCEPTED = datetime(2024, 5, 2, 21, 16, 18, 845999, tzinfo=UTC)
LATER = datetime(2024, 5, 2, 21, 16, 19, 901000, tzinfo=UTC)

HEADER_BLOCK = (
    b"X-SES-CONFIGURATION-SET: marketing-eu\r\n"
    b"X-SES-MESSAGE-TAGS: campaign=spring, variant=b\r\n"
    b"From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <News@Example.COM>\r\n"
    b"To: ana@example.org,\r\n \"Doe, John\" <john@example.org>\r\n"
    b"Subject: =?utf-8?B?RnLDvGhsaW5n?= offers\r\n"
    b"Message-ID: <abc@example.com>\r\n"
    b"Date: Thu, 2 May 2024 21:16:18 +0000\r\n"
    b"\r\n"
    b"the body is not a header\r\n"
)


def info(**overrides: Any) -> MailInfo:
    args: dict[str, Any] = {
        "message_id": "0102018f3b2a4c1d-5d2e7c41-9a0b-4c3d-8e1f-2a3b4c5d6e7f-000000",
        "timestamp": ACCEPTED, "source": "news@example.com",
        "destination": ["ana@example.org", "john@example.org"], "header_block": HEADER_BLOCK,
        "configuration_set": "marketing-eu", "message_tags": {"campaign": ["spring"], "variant": ["b"]},
        "source_ip": "198.51.100.7", "caller_identity": "smtp-user",
    }
    args.update(overrides)
    return mail_info(**args)


@pytest.mark.parametrize(("ts", "text"), [
    (datetime(2024, 5, 2, 21, 16, 18, 845000, tzinfo=UTC), "2024-05-02T21:16:18.845Z"),
    (datetime(2024, 5, 2, 21, 16, 18, 845999, tzinfo=UTC), "2024-05-02T21:16:18.845Z"),  # down
    (datetime(2024, 5, 2, 21, 16, 18, 999999, tzinfo=UTC), "2024-05-02T21:16:18.999Z"),
    (datetime(2024, 5, 2, 21, 16, 18, tzinfo=UTC), "2024-05-02T21:16:18.000Z"),
    (datetime(2024, 5, 2, 23, 16, 18, 1000, tzinfo=timezone(timedelta(hours=2))), "2024-05-02T21:16:18.001Z"),
    (datetime(2024, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))), "2023-12-31T23:30:00.000Z"),
    (datetime(5, 1, 2, 3, 4, 5, tzinfo=UTC), "0005-01-02T03:04:05.000Z"),
])
def test_iso(ts: datetime, text: str) -> None:
    assert iso(ts) == text


def test_iso_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="timezone"):
        iso(datetime(2024, 5, 2))


def test_mail_object_exact() -> None:
    assert mail_object(info()) == {
        "timestamp": "2024-05-02T21:16:18.845Z",
        "source": "news@example.com",
        "messageId": "0102018f3b2a4c1d-5d2e7c41-9a0b-4c3d-8e1f-2a3b4c5d6e7f-000000",
        "destination": ["ana@example.org", "john@example.org"],
        "headersTruncated": False,
        "headers": [
            {"name": "X-SES-CONFIGURATION-SET", "value": "marketing-eu"},
            {"name": "X-SES-MESSAGE-TAGS", "value": "campaign=spring, variant=b"},
            {"name": "From", "value": "=?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <News@Example.COM>"},
            {"name": "To", "value": 'ana@example.org, "Doe, John" <john@example.org>'},
            {"name": "Subject", "value": "=?utf-8?B?RnLDvGhsaW5n?= offers"},
            {"name": "Message-ID", "value": "<abc@example.com>"},
            {"name": "Date", "value": "Thu, 2 May 2024 21:16:18 +0000"},
        ],
        "commonHeaders": {
            "from": ["Jürgen Müller <News@Example.COM>"],
            "to": ["ana@example.org", '"Doe, John" <john@example.org>'],
            "date": "Thu, 2 May 2024 21:16:18 +0000",
            "messageId": "<abc@example.com>",
            "subject": "Frühling offers",
        },
        "tags": {
            "ses:configuration-set": ["marketing-eu"],
            "ses:source-ip": ["198.51.100.7"],
            "ses:from-domain": ["example.com"],
            "ses:caller-identity": ["smtp-user"],
            "campaign": ["spring"],
            "variant": ["b"],
        },
    }


@pytest.mark.parametrize(("block", "headers"), [
    (b"Subject: a\r\n  b\r\n\tc\r\n", [("Subject", "a  b\tc")]),  # unfolding keeps the white space
    (b"Subject: a\n b\nX-A:  spaced  \n", [("Subject", "a b"), ("X-A", "spaced")]),
    (b"Subject : obsolete\r\n", [("Subject", "obsolete")]),
    (b" orphan continuation\r\nA: 1\r\n", [("A", "1")]),
    (b"no colon here\r\n continued\r\nA: 1\r\n", [("A", "1")]),
    (b"From someone@example.com Thu May  2 21:16:18 2024\r\nA: 1\r\n", [("A", "1")]),  # mbox line
    (b"A: caf\xe9\r\n", [("A", "caf\ufffd")]),
    (b"A: 1\r\n\r\nB: 2\r\n", [("A", "1")]),
    (b"Empty:\r\n", [("Empty", "")]),
    (b"", []),
])
def test_headers_as_submitted(block: bytes, headers: list[tuple[str, str]]) -> None:
    assert list(info(header_block=block).headers) == headers


def _block(*sizes: int) -> tuple[bytes, list[tuple[str, str]]]:
    """Headers X-0, X-1... whose len(name) + len(value) is each given size."""
    pairs = [(f"X-{i}", "v" * (size - len(f"X-{i}"))) for i, size in enumerate(sizes)]
    return b"".join(f"{n}: {v}\r\n".encode() for n, v in pairs), pairs


@pytest.mark.parametrize(("sizes", "kept", "truncated"), [
    ((5000, 5240), 2, False),  # exactly 10 KB is kept
    ((5000, 5241), 1, True),
    ((5000, 5241, 10), 1, True),  # cut at the first that does not fit, order kept
    ((10241,), 0, True),
    ((1000,) * 10, 10, False),
    ((1000,) * 11, 10, True),
])
def test_headers_truncated_at_10kb(sizes: tuple[int, ...], kept: int, truncated: bool) -> None:
    block, pairs = _block(*sizes)
    mail = info(header_block=block)
    assert list(mail.headers) == pairs[:kept]
    assert mail.headers_truncated is truncated
    assert mail_object(mail)["headersTruncated"] is truncated


def test_common_headers_come_from_all_headers_even_past_10kb() -> None:
    block, _ = _block(10241)
    mail = info(header_block=block + b"Subject: late\r\n")
    assert mail.common_headers == {"subject": "late"}


@pytest.mark.parametrize(("block", "common"), [
    (b"Subject: =?iso-8859-1?q?caf=E9?=\r\n", {"subject": "café"}),
    (b"Subject: =?utf-8?q?a?=\r\n =?utf-8?q?b?=\r\n", {"subject": "ab"}),  # RFC 2047 §6.2
    (b"Subject: =?x-unknown?q?caf=E9?=\r\n", {"subject": "caf\ufffd"}),  # no lone surrogates
    (b"Cc: a@x.y\r\nBcc: b@x.y\r\nReply-To: Help <help@x.y>\r\n",
     {"cc": ["a@x.y"], "bcc": ["b@x.y"], "replyTo": ["Help <help@x.y>"]}),
    (b"To: undisclosed-recipients:;\r\n", {"to": ["undisclosed-recipients:;"]}),
    (b"To: Team: a@x.y, b@x.y;\r\n", {"to": ["a@x.y", "b@x.y"]}),
    (b"Subject: first\r\nSubject: second\r\n", {"subject": "first"}),
    (b"X-Other: 1\r\n", {}),
])
def test_common_headers(block: bytes, common: dict[str, Any]) -> None:
    assert info(header_block=block).common_headers == common


@pytest.mark.parametrize(("block", "domain"), [
    (b"From: News <News@Mail.Example.COM>\r\n", "mail.example.com"),
    (b"From: a@x.y, b@z.w\r\n", "x.y"),
    (b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.org>\r\n", "example.org"),
    (b"From: nobody\r\n", None),
    (b"To: a@x.y\r\n", None),
])
def test_from_domain_tag(block: bytes, domain: str | None) -> None:
    tags = info(header_block=block).tags
    assert tags.get("ses:from-domain") == ([domain] if domain else None)


def test_auto_tags_only_when_known() -> None:
    mail = info(header_block=b"", configuration_set=None, caller_identity=None, message_tags={})
    assert mail.tags == {"ses:source-ip": ["198.51.100.7"]}


def test_message_tags_are_copied_not_shared() -> None:
    tags = {"campaign": ["spring"]}
    mail = info(message_tags=tags)
    mail.tags["campaign"].append("x")
    assert tags == {"campaign": ["spring"]}
    record = mail_object(mail)
    record["tags"]["campaign"].append("y")
    record["commonHeaders"]["to"].append("z")
    assert mail.tags["campaign"] == ["spring", "x"]
    assert "z" not in mail.common_headers["to"]


MAIL = info()


def _all_records() -> list[dict[str, Any]]:
    return [
        records.send_event(MAIL),
        records.reject_event(MAIL, reason="Bad content"),
        records.delivery_event(MAIL, recipients=["ana@example.org"], timestamp=LATER,
                               smtp_response="250 2.0.0 OK", reporting_mta="relay.example.net",
                               remote_mta_ip="192.0.2.25"),
        records.bounce_event(MAIL, recipients=[BouncedRecipient(email_address="ana@example.org", status="5.1.1",
                                                                 diagnostic_code="smtp; 550 5.1.1 user unknown")],
                             bounce_type="Permanent", bounce_sub_type="NoEmail", timestamp=LATER,
                             feedback_id="fb-1", reporting_mta="relay.example.net"),
        records.delivery_delay_event(MAIL, recipients=[DelayedRecipient(email_address="ana@example.org",
                                                                        status="4.4.1",
                                                                        diagnostic_code="smtp; 421 try later")],
                                     delay_type="TransientCommunicationFailure",
                                     expiration_time=ACCEPTED + timedelta(hours=4), timestamp=LATER,
                                     reporting_mta="relay.example.net"),
        records.open_event(MAIL, recipient="ana@example.org", timestamp=LATER, ip_address="203.0.113.20",
                           user_agent="Mozilla/5.0"),
        records.click_event(MAIL, recipient="ana@example.org", timestamp=LATER, ip_address="203.0.113.20",
                            user_agent="Mozilla/5.0", link="https://shop.example.com/spring?a=1&b=2",
                            link_tags={"product": ["shoes"]}),
        records.rendering_failure_event(MAIL, error_message="unbalanced HTML", recipient="ana@example.org"),
        records.complaint_event(MAIL, recipients=["ana@example.org"], timestamp=LATER, feedback_id="fb-2",
                                feedback_type="abuse", user_agent="Yahoo!-Mail-Feedback/2.0",
                                arrival_date=ACCEPTED),
    ]


def test_child_objects_exact() -> None:
    children = [{k: v for k, v in r.items() if k != "mail"} for r in _all_records()]
    assert children == [
        {"eventType": "Send", "send": {}},
        {"eventType": "Reject", "reject": {"reason": "Bad content"}},
        {"eventType": "Delivery", "delivery": {
            "timestamp": "2024-05-02T21:16:19.901Z", "processingTimeMillis": 1056,
            "recipients": ["ana@example.org"], "smtpResponse": "250 2.0.0 OK",
            "reportingMTA": "relay.example.net", "remoteMtaIp": "192.0.2.25"}},
        {"eventType": "Bounce", "bounce": {
            "bounceType": "Permanent", "bounceSubType": "NoEmail",
            "bouncedRecipients": [{"emailAddress": "ana@example.org", "action": "failed", "status": "5.1.1",
                                   "diagnosticCode": "smtp; 550 5.1.1 user unknown"}],
            "timestamp": "2024-05-02T21:16:19.901Z", "feedbackId": "fb-1",
            "reportingMTA": "dns; relay.example.net"}},
        {"eventType": "DeliveryDelay", "deliveryDelay": {
            "timestamp": "2024-05-02T21:16:19.901Z", "delayType": "TransientCommunicationFailure",
            "expirationTime": "2024-05-03T01:16:18.845Z",
            "delayedRecipients": [{"emailAddress": "ana@example.org", "status": "4.4.1",
                                   "diagnosticCode": "smtp; 421 try later"}],
            "reportingMTA": "relay.example.net"}},
        {"eventType": "Open", "open": {
            "ipAddress": "203.0.113.20", "timestamp": "2024-05-02T21:16:19.901Z", "userAgent": "Mozilla/5.0",
            "recipient": "ana@example.org"}},
        {"eventType": "Click", "click": {
            "ipAddress": "203.0.113.20", "timestamp": "2024-05-02T21:16:19.901Z", "userAgent": "Mozilla/5.0",
            "link": "https://shop.example.com/spring?a=1&b=2", "linkTags": {"product": ["shoes"]},
            "recipient": "ana@example.org"}},
        {"eventType": "Rendering Failure", "failure": {
            "errorMessage": "unbalanced HTML", "recipient": "ana@example.org"}},
        {"eventType": "Complaint", "complaint": {
            "complainedRecipients": [{"emailAddress": "ana@example.org"}],
            "timestamp": "2024-05-02T21:16:19.901Z", "feedbackId": "fb-2", "complaintSubType": None,
            "userAgent": "Yahoo!-Mail-Feedback/2.0", "complaintFeedbackType": "abuse",
            "arrivalDate": "2024-05-02T21:16:18.845Z"}},
    ]


@pytest.mark.parametrize("record", _all_records(), ids=lambda r: r["eventType"])
def test_every_record_is_json_with_the_ses_mail_object(record: dict[str, Any]) -> None:
    assert json.loads(json.dumps(record)) == record
    assert record["mail"] == mail_object(MAIL)
    assert list(record) == ["eventType", "mail", _child_key(record["eventType"])]
    assert record["eventType"] in EVENT_TYPE_KEYS


def _child_key(event_type: str) -> str:
    return "failure" if event_type == "Rendering Failure" else EVENT_TYPE_KEYS[event_type]


@pytest.mark.parametrize(("record", "absent"), [
    (records.delivery_event(MAIL, recipients=["a@x.y"], timestamp=LATER, smtp_response="250 ok",
                            reporting_mta="h", remote_mta_ip=None)["delivery"], "remoteMtaIp"),
    (records.rendering_failure_event(MAIL, error_message="x")["failure"], "recipient"),
    (records.rendering_failure_event(MAIL, error_message="x")["failure"], "templateName"),
    # SES: userAgent, complaintFeedbackType and arrivalDate only with a feedback report.
    (records.complaint_event(MAIL, recipients=["a@x.y"], timestamp=LATER, feedback_id="f", feedback_type=None,
                             user_agent=None, arrival_date=None)["complaint"], "userAgent"),
])
def test_optional_fields_are_left_out(record: dict[str, Any], absent: str) -> None:
    assert absent not in record


@pytest.mark.parametrize(("delivered", "millis"), [
    (ACCEPTED, 0),
    (ACCEPTED - timedelta(seconds=5), 0),  # wall clock stepped back: never negative
    (datetime(2024, 5, 2, 21, 16, 18, 846000, tzinfo=UTC), 1),  # agrees with the printed values
    (ACCEPTED + timedelta(days=1), 86_400_000),
])
def test_processing_time(delivered: datetime, millis: int) -> None:
    record = records.delivery_event(MAIL, recipients=[], timestamp=delivered, smtp_response="250",
                                    reporting_mta="h", remote_mta_ip=None)
    assert record["delivery"]["processingTimeMillis"] == millis


def test_event_type_keys() -> None:
    assert EVENT_TYPE_KEYS == {
        "Send": "send", "Reject": "reject", "Bounce": "bounce", "Complaint": "complaint",
        "Delivery": "delivery", "Open": "open", "Click": "click", "Rendering Failure": "renderingFailure",
        "DeliveryDelay": "deliveryDelay", "Subscription": "subscription",
    }


@settings(max_examples=200, deadline=None)
@given(block=st.binary(max_size=400) | st.lists(
    st.sampled_from([b"From: ", b"To: ", b"Subject: ", b"Cc: ", b"=?utf-8?q?", b"=?", b"?=", b"<", b">", b"@",
                     b",", b";", b":", b'"', b"(", b")", b"\\", b"\r\n", b"\n", b" ", b"\xff", b"\xc3\xa9", b"a"]),
    max_size=60).map(b"".join))
def test_garbage_headers_never_raise(block: bytes) -> None:
    record = records.send_event(info(header_block=block))
    json.dumps(record, ensure_ascii=False).encode("utf-8")  # no lone surrogates either


def test_destination_is_capped_at_ses_limit_so_events_stay_small() -> None:
    from relay.events.records import DESTINATION_LIMIT, delivery_event, mail_info
    rcpts = [f"r{n}@example.org" for n in range(10_000)]
    info = mail_info(message_id="m", timestamp=datetime(2024, 1, 1, tzinfo=timezone.utc), source="a@example.com",
                     destination=rcpts, header_block=b"Subject: x\r\n\r\n", configuration_set=None,
                     message_tags={}, source_ip="127.0.0.1", caller_identity=None)
    record = delivery_event(info, recipients=[rcpts[-1]], timestamp=datetime(2024, 1, 1, tzinfo=timezone.utc),
                            smtp_response="250 ok", reporting_mta="relay.test", remote_mta_ip=None)
    assert record["mail"]["destination"] == rcpts[:DESTINATION_LIMIT] and DESTINATION_LIMIT == 50
    assert record["delivery"]["recipients"] == [rcpts[-1]]  # the recipient it is about, still exact
    small = mail_info(message_id="m", timestamp=datetime(2024, 1, 1, tzinfo=timezone.utc), source="a@example.com",
                      destination=rcpts[:3], header_block=b"", configuration_set=None, message_tags={},
                      source_ip="127.0.0.1", caller_identity=None)
    assert delivery_event(small, recipients=[rcpts[0]], timestamp=datetime(2024, 1, 1, tzinfo=timezone.utc),
                          smtp_response="250 ok", reporting_mta="r", remote_mta_ip=None)["mail"]["destination"] == rcpts[:3]


@pytest.mark.parametrize("event_type, recipient, narrowed", [
    ("Delivery", "b@x.test", True), ("Bounce", "b@x.test", True), ("DeliveryDelay", "b@x.test", True),
    ("Open", "b@x.test", True), ("Click", "b@x.test", True), ("Complaint", "b@x.test", True),
    ("Send", None, False), ("Reject", None, False), ("Rendering Failure", "b@x.test", False),
    ("Open", None, False),  # no recipient known: left as it is
])
def test_for_recipient_narrows_per_recipient_events(event_type: str, recipient: str | None, narrowed: bool) -> None:
    record = {"eventType": event_type, "mail": {"messageId": "m", "destination": ["a@x.test", "b@x.test"]}}
    out = records.for_recipient(record, recipient)
    assert out["mail"]["destination"] == (["b@x.test"] if narrowed else ["a@x.test", "b@x.test"])
    assert out["mail"]["messageId"] == "m"
    assert record["mail"]["destination"] == ["a@x.test", "b@x.test"]  # the input is unchanged


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)) | st.sampled_from('"\\\n\x00\u2028'),
                max_size=20)


@settings(max_examples=200, deadline=None)
@given(ip=_TEXT, ua=_TEXT, rcpt=_TEXT, link=_TEXT,
       tags=st.dictionaries(_TEXT, st.lists(_TEXT, max_size=3), max_size=3),
       ms=st.integers(min_value=1_600_000_000_000, max_value=4_000_000_000_000))
def test_hit_json_is_what_the_bus_makes_of_the_record(ip: str, ua: str, rcpt: str, link: str,
                                                       tags: dict[str, list[str]], ms: int) -> None:
    """The tracking hit path's text builders agree byte for byte with json.dumps of the records."""
    mail = info(message_tags={"caf\u00e9": ["s\u00e9t \"x\""]})
    at = ms / 1000 + 0.0004
    ts = datetime.fromtimestamp(at, UTC)
    assert records.iso_seconds(at) == records.iso(ts)
    dumps = lambda r: json.dumps(r, separators=(",", ":"), ensure_ascii=False)  # noqa: E731 - as EventBus
    mail_text = records.mail_json(mail)
    assert records.open_event_json(mail_text, recipient=rcpt, timestamp=records.iso(ts), ip_address=ip,
                                   user_agent=ua) == dumps(records.open_event(
                                       mail, recipient=rcpt, timestamp=ts, ip_address=ip, user_agent=ua))
    assert records.click_event_json(mail_text, recipient=rcpt, timestamp=records.iso(ts), ip_address=ip,
                                    user_agent=ua, link=link, link_tags=records.event_json(tags)) == dumps(
        records.click_event(mail, recipient=rcpt, timestamp=ts, ip_address=ip, user_agent=ua, link=link,
                            link_tags=tags))


def test_hit_json_keeps_lone_surrogates_as_the_bus_does() -> None:
    mail = info()
    ts = datetime(2026, 11, 29, 12, 0, 0, 123000, tzinfo=UTC)
    ua = "bad \udcff agent"
    assert records.open_event_json(records.mail_json(mail), recipient="r", timestamp=records.iso(ts),
                                   ip_address="1.2.3.4", user_agent=ua) == json.dumps(
        records.open_event(mail, recipient="r", timestamp=ts, ip_address="1.2.3.4", user_agent=ua),
        separators=(",", ":"), ensure_ascii=False)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([
    b"From: News <News@Mail.Example.COM>\r\n", b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.org>\r\n",
    b"From: nobody\r\n", b"To: a@x.y, Team: b@x.y;\r\n", b"Subject: =?utf-8?q?a?=\r\n =?utf-8?q?b?=\r\n",
    b"Cc: c@x.y\r\n", b"X-Long: " + b"v" * 3000 + b"\r\n", b"Date: Thu, 27 Nov 2025 12:00:00 +0000\r\n",
    b"Message-ID: <m@x.y>\r\n", b"garbage line\r\n", b" continuation\r\n", b"Reply-To: r@x.y\r\n",
]), max_size=10).map(b"".join))
def test_headers_parsed_by_intake_give_the_same_mail(block: bytes) -> None:
    # intake hands mail_info the fields it parsed (one parse per message, not two)
    from relay.headers import header_fields
    parsed = tuple((f.name, f.value) for f in header_fields(block))
    assert info(header_block=block, headers=parsed) == info(header_block=block)
