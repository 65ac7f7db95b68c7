# classify_bounce: SES's (bounceType, bounceSubType) table (ses-events.md §3.4) from a DSN's
# Status and Diagnostic-Code.
from __future__ import annotations

import pytest

from relay.feedback.classify import classify_bounce

CASES = [
    # status, diagnostic code, expected
    ("5.1.1", "smtp; 550 5.1.1 <a@b>: Recipient address rejected: User unknown", ("Permanent", "NoEmail")),
    ("5.1.2", "smtp; 550 5.1.2 Host unknown", ("Permanent", "NoEmail")),
    ("5.1.3", None, ("Permanent", "NoEmail")),
    ("5.1.10", "smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound", ("Permanent", "NoEmail")),
    ("4.1.1", "smtp; 450 4.1.1 try later", ("Transient", "General")),  # NoEmail only from 5.x.x
    ("5.0.0", "smtp; 550 5.1.1 <a@b>... User unknown", ("Permanent", "NoEmail")),  # Exim's 5.0.0
    ("5.0.0", "smtp; 550 unknown user", ("Permanent", "NoEmail")),  # wording, no code
    (None, "smtp; 550 No such user here", ("Permanent", "NoEmail")),
    ("5.2.2", "smtp; 552 5.2.2 Mailbox full", ("Transient", "MailboxFull")),  # SES: Transient
    ("4.2.2", "smtp; 452 4.2.2 Over quota", ("Transient", "MailboxFull")),
    ("5.0.0", "smtp; 550 Mailbox is full", ("Transient", "MailboxFull")),
    (None, "smtp; 554 quota exceeded", ("Transient", "MailboxFull")),
    ("5.3.4", "smtp; 552 5.3.4 Message size exceeds fixed limit", ("Transient", "MessageTooLarge")),
    ("5.2.3", None, ("Transient", "MessageTooLarge")),
    (None, "smtp; 552 Too much mail data", ("Transient", "MessageTooLarge")),  # RFC 5321 552
    ("5.7.1", "smtp; 554 5.7.1 Message rejected as spam", ("Transient", "ContentRejected")),
    ("5.7.1", "smtp; 550 5.7.1 Rejected by policy", ("Transient", "ContentRejected")),
    ("5.6.0", "smtp; 554 5.6.0 Invalid MIME", ("Transient", "ContentRejected")),
    ("5.7.1", "smtp; 550 5.7.1 Relaying denied", ("Permanent", "General")),  # 7.1 without content wording
    ("5.7.1", "smtp; 552 5.7.1 Attachment type not allowed (.exe)", ("Transient", "AttachmentRejected")),
    ("5.0.0", "smtp; 554 File type not permitted", ("Transient", "AttachmentRejected")),
    ("5.4.4", "smtp; 550 5.4.4 Unable to route", ("Permanent", "General")),
    ("4.4.1", "X-Postfix; connect to mx.example.net[192.0.2.1]:25: Connection timed out", ("Transient", "General")),
    ("4.7.0", None, ("Transient", "General")),
    ("5.2.1", "smtp; 550 5.2.1 Mailbox disabled", ("Permanent", "General")),
    (None, "smtp; 550-5.1.1 The email account that you tried to reach does not exist.", ("Permanent", "NoEmail")),
    (None, "smtp; 421 4.7.0 Try again later", ("Transient", "General")),
    (None, "smtp; 550 Rejected", ("Permanent", "General")),
    ("5.1.1 (bad destination mailbox)", None, ("Permanent", "NoEmail")),  # a comment after the code
    # Unclassifiable
    (None, None, ("Undetermined", "Undetermined")),
    ("", "", ("Undetermined", "Undetermined")),
    ("garbage", "no code at all", ("Undetermined", "Undetermined")),
    ("2.0.0", "smtp; 250 2.0.0 Ok", ("Undetermined", "Undetermined")),  # delivered: not a bounce
    ("6.1.1", None, ("Undetermined", "Undetermined")),  # no such class in RFC 3463
    ("5.1111.1", None, ("Undetermined", "Undetermined")),
    (None, "X-Postfix; mail for example.com loops back to myself", ("Undetermined", "Undetermined")),
]


@pytest.mark.parametrize(("status", "diagnostic", "expected"), CASES)
def test_classify_bounce(status: str | None, diagnostic: str | None, expected: tuple[str, str]) -> None:
    assert classify_bounce(status, diagnostic) == expected


def test_status_class_wins_over_a_disagreeing_diagnostic() -> None:
    # RFC 3463 §3.1: the Status field is the report's verdict; the reply only refines X.0.0.
    assert classify_bounce("4.0.0", "smtp; 550 5.1.1 unknown") == ("Transient", "General")
    assert classify_bounce("5.0.0", "smtp; 450 4.2.2 full") == ("Permanent", "General")
