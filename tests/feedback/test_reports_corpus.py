# Each corpus file (tests/feedback/corpus/, real MTAs' shapes) parsed to exact values.
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from relay.feedback.classify import classify_bounce
from relay.feedback.reports import (
    AutoReply,
    BounceReport,
    ComplaintReport,
    RecipientStatus,
    Report,
    Unrecognised,
    parse_report,
)

CORPUS = Path(__file__).parent / "corpus"


def parse(name: str) -> Report:
    return parse_report((CORPUS / name).read_bytes())


def header(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name.lower()), None)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)  # type: ignore[misc]


def bounce(name: str) -> BounceReport:
    report = parse(name)
    assert isinstance(report, BounceReport), report
    return report


def complaint(name: str) -> ComplaintReport:
    report = parse(name)
    assert isinstance(report, ComplaintReport), report
    return report


def test_postfix_user_unknown() -> None:
    r = bounce("postfix-user-unknown.eml")
    assert r.standard
    assert r.reporting_mta == "dns; mail.example.org"
    assert r.arrival_date == utc(2023, 11, 14, 10, 15, 1)
    assert r.recipients == (RecipientStatus(
        address="nobody@example.org", original_recipient="nobody@example.org", action="failed", status="5.1.1",
        # folded over two lines in the DSN: unfolded, the fold's whitespace collapsed to one space
        diagnostic_code="smtp; 550 5.1.1 <nobody@example.org>: Recipient address rejected: "
                        "User unknown in virtual mailbox table",
        remote_mta="dns; mx1.example.org"),)
    # text/rfc822-headers: the original's headers, in order
    assert header(r.original_headers, "Message-ID") == "<offer-2023-11@example.com>"
    assert header(r.original_headers, "Feedback-ID") == "newsletter:relay:relay.example.com"
    assert header(r.original_headers, "Return-Path") == "<b-umwft2vo6xcb2c2jajaw6wfm34oibbc7i33qexqjhlpuiw6ibsek2gvb@bounces.example.com>"
    assert r.original_headers[0][0] == "Return-Path" and r.original_headers[-1][0] == "Content-Type"
    assert classify_bounce(r.recipients[0].status, r.recipients[0].diagnostic_code) == ("Permanent", "NoEmail")


def test_postfix_mailbox_full_5_2_2_is_transient_as_ses_says() -> None:
    r = bounce("postfix-mailbox-full.eml")
    assert r.reporting_mta == "dns; smtp.example.net"
    assert r.arrival_date == utc(2023, 11, 15, 7, 0, 11)  # 08:00:11 +0100
    (rcpt,) = r.recipients
    assert (rcpt.address, rcpt.action, rcpt.status) == ("full@example.net", "failed", "5.2.2")
    assert rcpt.diagnostic_code == "smtp; 552 5.2.2 <full@example.net>: Mailbox full"
    # message/rfc822: the returned original's headers
    assert header(r.original_headers, "Message-ID") == "<invoice-77@example.com>"
    assert classify_bounce(rcpt.status, rcpt.diagnostic_code) == ("Transient", "MailboxFull")


def test_postfix_delay_warning_keeps_delayed_actions() -> None:
    r = bounce("postfix-delayed.eml")
    assert [(x.address, x.action, x.status) for x in r.recipients] == [
        ("quota@example.org", "delayed", "4.2.2"),
        ("slow@example.net", "delayed", "4.4.1"),
    ]
    assert r.recipients[0].diagnostic_code == "smtp; 452 4.2.2 <quota@example.org>: Mailbox full: quota exceeded"
    assert r.recipients[1].diagnostic_code == "X-Postfix; connect to mx.example.net[192.0.2.99]:25: Connection timed out"
    assert r.recipients[1].remote_mta is None
    assert header(r.original_headers, "Message-ID") == "<digest-46@example.com>"
    assert [classify_bounce(x.status, x.diagnostic_code) for x in r.recipients] == [
        ("Transient", "MailboxFull"), ("Transient", "General")]


def test_exim_dsn_status_5_0_0_takes_the_detail_from_the_diagnostic() -> None:
    r = bounce("exim-dsn.eml")
    assert r.standard
    assert r.reporting_mta == "dns; mx.example.co.uk"
    assert r.arrival_date is None  # Exim writes no Arrival-Date
    assert [(x.address, x.action, x.status, x.remote_mta) for x in r.recipients] == [
        ("gone@example.co.uk", "failed", "5.0.0", "dns; mail.example.co.uk"),
        ("ghost@example.co.uk", "failed", "5.0.0", "dns; mail.example.co.uk"),
    ]
    assert r.recipients[0].diagnostic_code == \
        "smtp; 550 5.1.1 <gone@example.co.uk>: Recipient address rejected: User unknown"
    assert r.recipients[1].diagnostic_code == "smtp; 554 5.7.1 Message rejected as spam by Content Filtering"
    assert header(r.original_headers, "Message-ID") == "<tickets-friday@example.com>"
    assert [classify_bounce(x.status, x.diagnostic_code) for x in r.recipients] == [
        ("Permanent", "NoEmail"), ("Transient", "ContentRejected")]


def test_office365_ndr_recipient_not_found() -> None:
    r = bounce("office365-ndr.eml")
    assert r.reporting_mta == "dns;AM6PR01MB5207.eurprd01.prod.exchangelabs.com"
    assert r.arrival_date == utc(2023, 11, 21, 9, 12, 31)
    assert r.recipients == (RecipientStatus(
        address="nobody@contoso.example", original_recipient="nobody@contoso.example", action="failed",
        status="5.1.10",
        diagnostic_code="smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; "
                        "Recipient nobody@contoso.example not found by SMTP address lookup",
        remote_mta=None),)
    assert header(r.original_headers, "Message-ID") == "<report-q4@example.com>"
    assert classify_bounce("5.1.10", r.recipients[0].diagnostic_code) == ("Permanent", "NoEmail")


def test_gmail_dsn_multiline_550_5_1_1() -> None:
    r = bounce("gmail-dsn.eml")
    assert r.reporting_mta == "dns; googlemail.com"
    assert r.arrival_date == utc(2023, 11, 20, 9, 2, 3)  # 01:02:03 PST
    (rcpt,) = r.recipients
    assert (rcpt.address, rcpt.original_recipient, rcpt.action, rcpt.status) == (
        "no.such.user.2023@gmail.com", None, "failed", "5.1.1")
    assert rcpt.remote_mta == "dns; gmail-smtp-in.l.google.com. (142.250.102.27, the server for the domain gmail.com.)"
    assert rcpt.diagnostic_code is not None
    assert rcpt.diagnostic_code.startswith(
        "smtp; 550-5.1.1 The email account that you tried to reach does not exist. Please try 550-5.1.1 ")
    assert rcpt.diagnostic_code.endswith("a5-20020a170902c2c500b001cf5b7e2c11si2207316plx.311 - gsmtp")
    assert header(r.original_headers, "Message-ID") == "<welcome-0006@example.com>"
    assert header(r.original_headers, "Feedback-ID") == "welcome:relay:relay.example.com"
    assert classify_bounce(None, rcpt.diagnostic_code) == ("Permanent", "NoEmail")


def test_sendmail_dsn_upper_case_types() -> None:
    r = bounce("sendmail-dsn.eml")
    assert r.reporting_mta == "dns; smtp.example.edu"
    assert r.arrival_date == utc(2023, 11, 22, 14, 26, 0)
    assert r.recipients == (RecipientStatus(
        address="former.student@example.edu", original_recipient=None, action="failed", status="5.1.1",
        diagnostic_code="SMTP; 550 5.1.1 <former.student@example.edu>... User unknown",
        remote_mta="DNS; mail.example.edu"),)
    assert header(r.original_headers, "Message-ID") == "<reunion-2024@example.com>"


def test_qmail_is_a_non_standard_bounce_with_statuses_from_the_text() -> None:
    r = bounce("qmail.eml")
    assert not r.standard
    assert (r.reporting_mta, r.arrival_date, r.original_headers) == (None, None, ())
    assert r.recipients == (
        RecipientStatus(address="nobody@example.net", original_recipient=None, action="failed", status="5.1.1",
                        diagnostic_code=None, remote_mta=None),
        RecipientStatus(address="toobig@example.net", original_recipient=None, action="failed", status="5.3.4",
                        diagnostic_code=None, remote_mta=None),
    )
    assert [classify_bounce(x.status, x.diagnostic_code) for x in r.recipients] == [
        ("Permanent", "NoEmail"), ("Transient", "MessageTooLarge")]


def test_exim_plain_text_bounce_despite_auto_submitted() -> None:
    # Exim's classic bounce carries Auto-Submitted: auto-replied: it is still a bounce.
    r = bounce("exim-plain.eml")
    assert not r.standard
    assert r.recipients == (RecipientStatus(address="lost@example.jp", original_recipient=None, action="failed",
                                            status="5.1.1", diagnostic_code=None, remote_mta=None),)


def test_yahoo_arf_abuse_with_message_rfc822() -> None:
    r = complaint("arf-yahoo-abuse.eml")
    assert r.feedback_type == "abuse"
    assert r.user_agent == "Yahoo!-Mail-Feedback/2.0"
    assert r.arrival_date == utc(2023, 11, 23, 18, 40, 2)  # Yahoo's Received-Date
    assert r.original_recipients == ("annoyed.reader@yahoo.com",)
    assert r.original_mail_from == "b-cdmfpwqitr4oe6cm6awo2u5nft6frffe4gny7klw7qoard3v7mphjycj@bounces.example.com"
    assert r.source_ip is None
    assert r.reported_domain == "example.com"
    # Yahoo puts an mbox "From " line before the original's headers: not a header field
    assert r.original_headers[0] == ("X-Apparently-To", "annoyed.reader@yahoo.com; Thu, 23 Nov 2023 18:40:02 +0000")
    assert header(r.original_headers, "Message-ID") == "<blackfriday-0009@example.com>"
    assert header(r.original_headers, "Feedback-ID") == "blackfriday:relay:relay.example.com"


def test_arf_with_text_rfc822_headers_only() -> None:
    r = complaint("arf-headers-only.eml")
    assert r.feedback_type == "fraud"
    assert r.user_agent == "SomeGenerator/1.0"
    assert r.arrival_date == utc(2023, 11, 24, 12, 58, 21)
    assert r.original_recipients == ("first@mail.example.net", "second@mail.example.net")
    assert r.original_mail_from == "b-esz43vx6mpmchu2j3peotjei3gneco4zzne2hca74hfe32pgoi4yt6pf@bounces.example.com"
    assert r.source_ip == "198.51.100.7"
    assert header(r.original_headers, "Message-ID") == "<alert-0010@example.com>"
    assert header(r.original_headers, "Feedback-ID") == "security:relay:relay.example.com"


def test_dsn_wrapping_an_arf_is_the_arf() -> None:
    r = complaint("dsn-wrapping-arf.eml")
    assert r.feedback_type == "abuse"
    assert r.user_agent == "ISP-FBL/3.1"
    assert r.original_recipients == ("subscriber@isp.example",)
    assert r.original_mail_from == "b-7piq3l7jpki3ykzeti4umwdhluzrd6daewmjgu4wmaxdgjj7pejbmv52@bounces.example.com"
    # the ARF's own original (its sibling), not the DSN's returned message (the ARF itself)
    assert header(r.original_headers, "Message-ID") == "<flash-0011@example.com>"


def test_vacation_auto_reply() -> None:
    assert parse("vacation.eml") == AutoReply(reason="Auto-Submitted: auto-replied")


def test_human_reply_is_unrecognised() -> None:
    assert parse("human-reply.eml") == Unrecognised(reason="neither a bounce, a complaint nor an auto-reply")


def test_truncated_dsn_still_reads_the_delivery_status() -> None:
    r = bounce("broken-truncated.eml")
    (rcpt,) = r.recipients
    assert (rcpt.address, rcpt.status) == ("cancelado@example.com.br", "5.2.1")
    assert rcpt.diagnostic_code == "smtp; 550 5.2.1 <cancelado@example.com.br>: Mailbox disabled, not accepting messages"
    assert header(r.original_headers, "Message-ID") == "<cybermonday-0014@example.com>"
    assert classify_bounce(rcpt.status, rcpt.diagnostic_code) == ("Permanent", "General")


def test_multipart_report_without_boundary_is_unrecognised() -> None:
    # No boundary: the email package cannot find the parts, and flufl.bounce's detectors do
    # not read a delivery-status block out of plain text.
    assert parse("broken-no-boundary.eml") == Unrecognised(reason="neither a bounce, a complaint nor an auto-reply")


def test_garbage_delivery_status_is_unrecognised() -> None:
    assert parse("garbage-delivery-status.eml") == Unrecognised(reason="delivery-status part names no recipient")


def test_non_utf8_bytes_read_as_latin1() -> None:
    r = bounce("non-utf8.eml")
    (rcpt,) = r.recipients
    assert rcpt.address == "m\u00fcller@beispiel.example"  # ISO-8859-1 ü, not U+FFFD
    assert rcpt.original_recipient == "mueller@beispiel.example"
    assert rcpt.diagnostic_code == "smtp; 550 5.1.1 Empf\u00e4nger unbekannt"
    assert header(r.original_headers, "Message-ID") == "<latin-0017@example.com>"
    assert header(r.original_headers, "Subject") == b"\x93\xfa\x96{\x8c\xea".decode("latin-1")


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.eml")), ids=lambda p: p.name)
def test_every_corpus_file_parses_the_same_with_crlf(path: Path) -> None:
    # What arrives over SMTP has CRLF line ends; the corpus is stored with LF.
    data = path.read_bytes()
    assert parse_report(data.replace(b"\n", b"\r\n")) == parse_report(data)


def test_gmail_legacy_plain_text_bounce() -> None:
    r = bounce("gmail-legacy-plain.eml")
    assert not r.standard
    assert r.recipients == (RecipientStatus(address="gone@example.co.jp", original_recipient=None, action="failed",
                                            status="5.1.1", diagnostic_code=None, remote_mta=None),)


def test_postfix_smtputf8_global_delivery_status() -> None:
    # RFC 6533: message/global-delivery-status with utf-8 address types, message/global-headers.
    r = bounce("postfix-smtputf8.eml")
    assert r.standard
    assert r.reporting_mta == "dns; correo.example.es"
    assert [(x.address, x.original_recipient, x.status) for x in r.recipients] == [
        ("jos\u00e9@example.es", "jos\u00e9@example.es", "5.1.1"),
        ("zo\u00eb@example.es", None, "5.1.1"),
    ]
    assert r.recipients[1].diagnostic_code == \
        "smtp; 550 5.1.1 <zo\u00eb@example.es>: Recipient address rejected: User unknown"
    assert header(r.original_headers, "Message-ID") == "<invierno-0020@example.com>"
    assert header(r.original_headers, "Subject") == "Ofertas de invierno \u2744"


def test_a_persons_reply_that_looks_like_a_qmail_bounce_is_not_a_bounce() -> None:
    # flufl.bounce's qmail detector reads "Hi. This is the ...\n\n<x@y>: ..." as a bounce; its
    # heuristics only run on mail from a mailer (null Return-Path, MAILER-DAEMON, postmaster,
    # X-Failed-Recipients, Auto-Submitted), so no address is suppressed over a person's reply.
    data = (CORPUS / "human-reply-qmail-lookalike.eml").read_bytes()
    assert parse_report(data) == Unrecognised(reason="neither a bounce, a complaint nor an auto-reply")
    from_daemon = data.replace(b"From: Carla Example <carla@example.net>", b"From: MAILER-DAEMON@example.net")
    r = parse_report(from_daemon)
    assert isinstance(r, BounceReport) and not r.standard
    assert [x.address for x in r.recipients] == ["dora@example.net", "emil@example.net"]


def test_a_plain_text_delay_warning_is_delayed_not_failed() -> None:
    # flufl.bounce tells temporary failures (warnings) from permanent ones: action "delayed".
    r = bounce("gmail-legacy-delayed.eml")
    assert not r.standard
    assert r.recipients == (RecipientStatus(address="slow@example.co.jp", original_recipient=None,
                                            action="delayed", status=None, diagnostic_code=None, remote_mta=None),)
    assert classify_bounce(None, None) == ("Undetermined", "Undetermined")


def test_every_corpus_file_has_its_own_test() -> None:
    source = Path(__file__).read_text(encoding="utf-8")
    untested = [p.name for p in CORPUS.glob("*.eml") if f'"{p.name}"' not in source]
    assert untested == []
