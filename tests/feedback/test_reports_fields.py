# parse_report on small hand-written reports: the field rules the corpus does not pin down.
from __future__ import annotations

from datetime import datetime, timezone

from relay.feedback.reports import BounceReport, ComplaintReport, RecipientStatus, parse_report


def dsn(*blocks: str) -> bytes:
    return ("From: MAILER-DAEMON@mx.example.org\n"
            "Content-Type: multipart/report; report-type=delivery-status; boundary=z\n\n--z\n"
            "Content-Type: text/plain\n\nnotification\n\n--z\n"
            "Content-Type: message/delivery-status\n\n" + "\n\n".join(blocks) + "\n\n--z--\n").encode()


def bounce(data: bytes) -> BounceReport:
    report = parse_report(data)
    assert isinstance(report, BounceReport), report
    return report


def test_original_recipient_when_there_is_no_final_recipient() -> None:
    r = bounce(dsn("Reporting-MTA: dns; mx.example.org", "Original-Recipient: rfc822; <a@example.org>\nAction: failed"))
    assert r.recipients == (RecipientStatus(address="a@example.org", original_recipient="a@example.org",
                                            action="failed", status=None, diagnostic_code=None, remote_mta=None),)


def test_comments_after_action_and_status_are_dropped() -> None:
    r = bounce(dsn("Final-Recipient: rfc822;a@example.org\nAction: Failed (permanent)\nStatus: 5.1.1 (bad mailbox)"))
    assert (r.recipients[0].action, r.recipients[0].status) == ("failed", "5.1.1")


def test_malformed_status_is_none() -> None:
    r = bounce(dsn("Final-Recipient: rfc822;a@example.org\nAction: failed\nStatus: 550"))
    assert r.recipients[0].status is None


def test_a_bare_address_without_type() -> None:
    r = bounce(dsn("Final-Recipient: <a@example.org>\nAction: failed"))
    assert r.recipients[0].address == "a@example.org"


def test_per_message_and_per_recipient_fields_merged_in_one_block() -> None:
    r = bounce(dsn("Reporting-MTA: dns; mx.example.org\nArrival-Date: Mon, 1 Jan 2024 10:00:00 -0000\n"
                   "Final-Recipient: rfc822; a@example.org\nAction: failed\nStatus: 5.0.0"))
    assert r.reporting_mta == "dns; mx.example.org"
    assert r.arrival_date == datetime(2024, 1, 1, 10, 0, tzinfo=timezone.utc)  # -0000: UTC
    assert [x.address for x in r.recipients] == ["a@example.org"]


def test_an_unreadable_arrival_date_is_none() -> None:
    r = bounce(dsn("Reporting-MTA: dns; mx\nArrival-Date: yesterday-ish", "Final-Recipient: rfc822; a@b.example"))
    assert r.arrival_date is None


def test_blocks_without_an_address_are_skipped() -> None:
    r = bounce(dsn("Reporting-MTA: dns; mx", "Action: failed\nStatus: 5.1.1", "Final-Recipient: rfc822; b@example.org"))
    assert [x.address for x in r.recipients] == ["b@example.org"]


def test_an_arf_without_feedback_type_is_other() -> None:
    data = (b"Content-Type: multipart/report; report-type=feedback-report; boundary=z\n\n--z\n"
            b"Content-Type: text/plain\n\nreport\n--z\nContent-Type: message/feedback-report\n\n"
            b"User-Agent: X/1\nOriginal-Rcpt-To: <a@example.org>\n\n--z--\n")
    r = parse_report(data)
    assert isinstance(r, ComplaintReport)
    assert (r.feedback_type, r.user_agent, r.original_recipients, r.original_headers) == (
        "other", "X/1", ("a@example.org",), ())
