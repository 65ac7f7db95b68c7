"""relay.feedback.attribution: what a parsed report becomes for one message (pure)."""
from __future__ import annotations

from datetime import datetime, timezone

from relay.events import records
from relay.feedback import attribution
from relay.feedback.reports import BounceReport, ComplaintReport, RecipientStatus

NOW = datetime(2026, 11, 29, 22, 0, tzinfo=timezone.utc)
MAIL = records.mail_info(message_id="000001a2296ca287-65ca594d-56d1-4ec4-9f16-facab2102a1d-000000",
                         timestamp=NOW, source="news@example.com", destination=["Ana@example.org", "bob@example.org"],
                         header_block=b"From: news@example.com\r\nMessage-ID: <m1@example.com>\r\n",
                         configuration_set="news", message_tags={}, source_ip="127.0.0.1", caller_identity=None)
BOTH = frozenset({"bounce", "complaint"})


def status(address: str, action: str | None = "failed", code: str | None = "5.1.1",
           diagnostic: str | None = "smtp; 550 5.1.1 user unknown") -> RecipientStatus:
    return RecipientStatus(address=address, original_recipient=None, action=action, status=code,
                           diagnostic_code=diagnostic, remote_mta=None)


def dsn(*statuses: RecipientStatus, mta: str | None = "dns; mx.example.net") -> BounceReport:
    return BounceReport(recipients=statuses, reporting_mta=mta, arrival_date=None, original_headers=(), standard=True)


def test_a_permanent_bounce_names_the_recipient_and_suppresses_it() -> None:
    d = attribution.bounce(dsn(status("ana@example.org")), mail=MAIL, recipients=["Ana@example.org"], now=NOW,
                           feedback_id="f1", reporting_mta="127.0.0.1", suppress_reasons=BOTH)
    assert d.ignored is None
    (record, rcpt), = d.events
    assert rcpt == "Ana@example.org"
    b = record["bounce"]
    assert (b["bounceType"], b["bounceSubType"]) == ("Permanent", "NoEmail")
    assert b["bouncedRecipients"] == [{"emailAddress": "Ana@example.org", "action": "failed", "status": "5.1.1",
                                       "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]
    assert b["reportingMTA"] == "dns; mx.example.net" and b["feedbackId"] == "f1"
    assert d.suppress == [("Ana@example.org", "BOUNCE")]
    # The set's suppressed_reasons without "bounce": the event, but no suppression.
    d = attribution.bounce(dsn(status("ana@example.org")), mail=MAIL, recipients=["Ana@example.org"], now=NOW,
                           feedback_id="f1", reporting_mta="x", suppress_reasons=frozenset({"complaint"}))
    assert len(d.events) == 1 and d.suppress == []


def test_transient_and_undetermined_bounces_do_not_suppress() -> None:
    for code, diagnostic, expected in (("4.2.2", "smtp; 452 4.2.2 mailbox full", "Transient"),
                                       (None, None, "Undetermined")):
        d = attribution.bounce(dsn(status("bob@example.org", code=code, diagnostic=diagnostic), mta=None), mail=MAIL,
                               recipients=["bob@example.org"], now=NOW, feedback_id="f", reporting_mta="peer.example",
                               suppress_reasons=BOTH)
        (record, _), = d.events
        assert record["bounce"]["bounceType"] == expected
        assert record["bounce"]["reportingMTA"] == "dns; peer.example"  # no Reporting-MTA: who delivered it
        assert d.suppress == []


def test_warnings_and_strangers_record_nothing() -> None:
    for action in ("delayed", "delivered", "relayed", "expanded"):
        d = attribution.bounce(dsn(status("bob@example.org", action=action)), mail=MAIL, recipients=["bob@example.org"],
                               now=NOW, feedback_id="f", reporting_mta="x", suppress_reasons=BOTH)
        assert d.events == [] and d.suppress == [] and action in (d.ignored or "")
    d = attribution.bounce(dsn(status("eve@example.org")), mail=MAIL, recipients=[], now=NOW, feedback_id="f",
                           reporting_mta="x", suppress_reasons=BOTH)
    assert d.events == [] and d.ignored


def test_without_a_token_the_dsn_names_its_recipients_case_insensitively() -> None:
    report = dsn(status("ANA@example.org"), status("eve@example.org"))
    assert attribution.dsn_recipients(report, MAIL.destination) == ["Ana@example.org"]


def test_complaint_recipients_and_records() -> None:
    report = ComplaintReport(feedback_type="abuse", user_agent="FBL/1", arrival_date=NOW,
                             original_recipients=("bob@example.org",), original_mail_from=None, source_ip=None,
                             original_headers=())
    assert attribution.complaint_recipients(report, MAIL.destination) == ["bob@example.org"]
    redacted = ComplaintReport(feedback_type="abuse", user_agent=None, arrival_date=None, original_recipients=(),
                               original_mail_from=None, source_ip=None, original_headers=())
    assert attribution.complaint_recipients(redacted, MAIL.destination) == []  # two recipients: cannot tell
    assert attribution.complaint_recipients(redacted, ["solo@example.org"]) == ["solo@example.org"]
    d = attribution.complaint(report, mail=MAIL, recipients=["bob@example.org"], now=NOW, feedback_id="f2",
                              suppress_reasons=BOTH)
    (record, rcpt), = d.events
    assert rcpt == "bob@example.org"
    assert record["eventType"] == "Complaint"
    assert record["complaint"] == {"complainedRecipients": [{"emailAddress": "bob@example.org"}],
                                   "timestamp": "2026-11-29T22:00:00.000Z", "feedbackId": "f2",
                                   "complaintSubType": None, "userAgent": "FBL/1",
                                   "complaintFeedbackType": "abuse", "arrivalDate": "2026-11-29T22:00:00.000Z"}
    assert d.suppress == [("bob@example.org", "COMPLAINT")]
    d = attribution.complaint(redacted, mail=MAIL, recipients=["bob@example.org"], now=NOW, feedback_id="f",
                              suppress_reasons=frozenset())
    assert "userAgent" not in d.events[0][0]["complaint"] and d.suppress == []


def test_verp_candidates_and_message_id_from_the_original() -> None:
    headers = [("Received", "from x by y for <b-aaaaaaaaaaaaaaaaaaaaaaaa@b.example.com>"),
               ("Return-Path", "<b-bbbbbbbbbbbbbbbbbbbbbbbb@b.example.com>"), ("Message-ID", " <m1@example.com> ")]
    assert attribution.verp_candidates(headers) == ["b-bbbbbbbbbbbbbbbbbbbbbbbb@b.example.com",
                                                    "b-aaaaaaaaaaaaaaaaaaaaaaaa@b.example.com"]
    assert attribution.header_message_id(headers) == "<m1@example.com>"
    many = [("X", " ".join(f"b-{'a' * 20}{i:04d}@b.example.com".replace("0", "a") for i in range(100)))]
    assert len(attribution.verp_candidates(many)) <= 8  # bounded on hostile input
