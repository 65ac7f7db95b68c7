from __future__ import annotations

import email
import email.policy
import quopri
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage, Message
from typing import Any

import pytest

from relay.dsn import FailedRecipient, build_dsn

ARRIVED = datetime(2024, 5, 2, 21, 16, 18, 845000, tzinfo=UTC)
NOW = datetime(2024, 5, 2, 23, 0, 5, tzinfo=timezone(timedelta(hours=2)))
HEADERS = b"From: News <news@example.com>\r\nTo: ana@example.org\r\nSubject: Spring offers\r\n"
USER_UNKNOWN = FailedRecipient(recipient="ana@example.org", status="5.1.1",
                               diagnostic="550 5.1.1 user unknown", remote_mta="mx.example.org")
TOO_BIG = FailedRecipient(recipient="bob@example.org", status="5.3.4", diagnostic="552 5.3.4 too big")


def dsn(**overrides: Any) -> bytes:
    args: dict[str, Any] = {
        "reporting_mta": "relay.example.net", "envid": "QQ314159", "original_sender": "news@example.com",
        "original_headers": HEADERS, "failed": [USER_UNKNOWN, TOO_BIG], "arrival_date": ARRIVED,
        "now": NOW, "message_id": "0102018f-dsn@relay.example.net",
    }
    args.update(overrides)
    return build_dsn(**args)


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def parts(msg: EmailMessage) -> list[EmailMessage]:
    return list(msg.iter_parts())  # type: ignore[arg-type]


def status_blocks(data: bytes) -> list[Message]:
    """The per-message block, then one block per recipient, of the delivery-status part."""
    blocks = parts(parse(data))[1].get_payload()
    assert isinstance(blocks, list)
    return [b for b in blocks if isinstance(b, Message)]


def test_top_level_headers() -> None:
    msg = parse(dsn())
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@relay.example.net>"
    assert msg["To"] == "news@example.com"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Date"] == "Thu, 02 May 2024 23:00:05 +0200"
    assert msg["Message-ID"] == "<0102018f-dsn@relay.example.net>"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert not msg.defects


def test_is_7bit_with_crlf_lines_only() -> None:
    data = dsn()
    assert data.isascii()
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


def test_three_parts_in_rfc_6522_order() -> None:
    types = [p.get_content_type() for p in parts(parse(dsn()))]
    assert types == ["text/plain", "message/delivery-status", "text/rfc822-headers"]


def test_human_part_lists_each_recipient_and_diagnostic() -> None:
    text = parts(parse(dsn()))[0].get_content()
    assert "relay.example.net" in text
    assert "<ana@example.org>: 550 5.1.1 user unknown (remote host mx.example.org)" in text
    assert "<bob@example.org>: 552 5.3.4 too big" in text


def test_delivery_status_fields() -> None:
    blocks = status_blocks(dsn())
    assert [dict(b.items()) for b in blocks] == [
        {"Reporting-MTA": "dns; relay.example.net", "Original-Envelope-Id": "QQ314159",
         "Arrival-Date": "Thu, 02 May 2024 21:16:18 +0000"},
        {"Final-Recipient": "rfc822; ana@example.org", "Action": "failed", "Status": "5.1.1",
         "Remote-MTA": "dns; mx.example.org", "Diagnostic-Code": "smtp; 550 5.1.1 user unknown"},
        {"Final-Recipient": "rfc822; bob@example.org", "Action": "failed", "Status": "5.3.4",
         "Diagnostic-Code": "smtp; 552 5.3.4 too big"},
    ]


def test_delivery_status_exact_bytes() -> None:
    data = dsn(failed=[USER_UNKNOWN])
    assert (b"Content-Type: message/delivery-status\r\n\r\n"
            b"Reporting-MTA: dns; relay.example.net\r\n"
            b"Original-Envelope-Id: QQ314159\r\n"
            b"Arrival-Date: Thu, 02 May 2024 21:16:18 +0000\r\n"
            b"\r\n"
            b"Final-Recipient: rfc822; ana@example.org\r\n"
            b"Action: failed\r\n"
            b"Status: 5.1.1\r\n"
            b"Remote-MTA: dns; mx.example.org\r\n"
            b"Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n"
            b"\r\n--") in data


def test_empty_envid_leaves_the_field_out() -> None:
    blocks = status_blocks(dsn(envid=""))
    assert "Original-Envelope-Id" not in blocks[0]


def test_original_headers_part_keeps_only_the_header_block() -> None:
    part = parts(parse(dsn(original_headers=HEADERS + b"\r\nthe body must not be here\r\n")))[2]
    assert part.get_payload(decode=True) == HEADERS
    assert part["Content-Transfer-Encoding"] is None


def test_lf_original_headers_become_crlf() -> None:
    part = parts(parse(dsn(original_headers=HEADERS.replace(b"\r\n", b"\n"))))[2]
    assert part.get_payload(decode=True) == HEADERS


def test_utf8_original_headers_are_global_headers_in_quoted_printable() -> None:
    # RFC 6533 §6.3 allows quoted-printable for message/global-headers; the DSN stays 7-bit.
    headers = "From: Jürgen <jürgen@exämple.com>\r\nSubject: Grüße\r\n".encode()
    data = dsn(original_headers=headers)
    assert data.isascii()
    part = parts(parse(data))[2]
    assert part.get_content_type() == "message/global-headers"
    assert part["Content-Transfer-Encoding"] == "quoted-printable"
    # The email package parses message/* bodies as messages, so read the part's bytes.
    encoded = data.split(b"Content-Transfer-Encoding: quoted-printable\r\n\r\n")[1].split(b"\r\n--")[0]
    assert quopri.decodestring(encoded) == headers


def test_raw_8bit_junk_headers_are_quoted_printable_rfc822_headers() -> None:
    headers = b"Subject: caf\xe9\r\n"
    data = dsn(original_headers=headers)
    assert data.isascii()
    part = parts(parse(data))[2]
    assert part.get_content_type() == "text/rfc822-headers"
    assert part.get_payload(decode=True) == headers


def test_long_multiline_diagnostic_is_unfolded_then_folded() -> None:
    reply = "550-5.1.1 The email account that you tried to reach does not exist.\n" + \
            "550 5.1.1 Please try double-checking the recipient's email address " + "x" * 120
    data = dsn(failed=[FailedRecipient(recipient="a@example.org", status="5.1.1", diagnostic=reply)])
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    blocks = status_blocks(data)
    assert blocks[1]["Diagnostic-Code"] == "smtp; " + " ".join(reply.split())


def test_unbreakable_diagnostic_stays_under_998_per_line() -> None:
    data = dsn(failed=[FailedRecipient(recipient="a@example.org", status="5.0.0", diagnostic="5" * 3000)])
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


def test_non_ascii_recipient_and_diagnostic() -> None:
    failed = FailedRecipient(recipient="jürgen@exämple.com", status="5.1.1", diagnostic="550 5.1.1 unbekannt: jürgen")
    data = dsn(failed=[failed])
    assert data.isascii()
    msg = parse(data)
    assert "<jürgen@exämple.com>: 550 5.1.1 unbekannt: jürgen" in parts(msg)[0].get_content()
    blocks = status_blocks(data)
    # RFC 6533 §3: utf-8 address type, non-ASCII as \x{HEX}
    assert blocks[1]["Final-Recipient"] == "utf-8; j\\x{FC}rgen@ex\\x{E4}mple.com"
    assert blocks[1]["Diagnostic-Code"] == "smtp; 550 5.1.1 unbekannt: j\\x{FC}rgen"


def test_boundary_is_deterministic_and_absent_from_the_parts() -> None:
    assert dsn() == dsn()
    msg = parse(dsn())
    boundary = msg.get_boundary()
    assert boundary is not None
    assert dsn().count(b"--" + boundary.encode()) == 4  # three parts and the close


def test_boundary_clash_picks_another() -> None:
    first = parse(dsn()).get_boundary()
    assert first is not None
    data = dsn(original_headers=b"X-Evil: --" + first.encode() + b"\r\n")
    msg = parse(data)
    assert msg.get_boundary() != first
    assert len(parts(msg)) == 3


@pytest.mark.parametrize(("overrides", "match"), [
    ({"original_sender": ""}, "null sender"),
    ({"failed": []}, "at least one"),
    ({"original_sender": "a@b\r\nBcc: x@y"}, "original_sender"),
    ({"reporting_mta": "evil host"}, "reporting_mta"),
    ({"message_id": "<x@y>"}, "message_id"),
    ({"envid": "a\r\nb"}, "envid"),
    ({"now": datetime(2024, 5, 2)}, "timezone"),
    ({"failed": [FailedRecipient(recipient="a@b", status="550", diagnostic="x")]}, "status"),
])
def test_invalid_input_raises(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dsn(**overrides)
