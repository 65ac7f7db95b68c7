from __future__ import annotations

import pytest

from relay.retry import (
    Outcome,
    RetryPolicy,
    backoff,
    bounce_subtype,
    classify,
    delay_type,
    enhanced_status,
    next_attempt_at,
)

POLICY = RetryPolicy(first_delay=5.0, max_delay=300.0, max_delivery_seconds=14400.0)


@pytest.mark.parametrize(("attempts", "delay"), [
    (1, 5.0), (2, 10.0), (3, 20.0), (4, 40.0), (5, 80.0), (6, 160.0), (7, 300.0), (8, 300.0),
    (10_000, 300.0),  # no float overflow for absurd counts
])
def test_backoff_doubles_then_caps(attempts: int, delay: float) -> None:
    assert backoff(POLICY, attempts) == delay


def test_backoff_rejects_zero_attempts() -> None:
    with pytest.raises(ValueError, match="attempts"):
        backoff(POLICY, 0)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"first_delay": 0}, "first_delay"),
    ({"first_delay": 10, "max_delay": 5}, "max_delay"),
    ({"max_delivery_seconds": 0}, "max_delivery_seconds"),
])
def test_policy_validation_names_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RetryPolicy(**kwargs)


@pytest.mark.parametrize(("now", "attempts", "expected"), [
    (1000.0, 1, 1005.0),
    (1000.0, 3, 1020.0),
    (1000.0 + 14400 - 300, 9, 1000.0 + 14400),  # lands exactly on the deadline: still tried
    (1000.0 + 14400 - 299, 9, None),  # one second past the deadline: bounce
    (1000.0 + 20000, 1, None),
])
def test_next_attempt_at(now: float, attempts: int, expected: float | None) -> None:
    assert next_attempt_at(POLICY, accepted_at=1000.0, now=now, attempts=attempts) == expected


@pytest.mark.parametrize(("code", "outcome"), [
    (250, Outcome.DELIVERED), (251, Outcome.DELIVERED), (200, Outcome.DELIVERED),
    (421, Outcome.TRANSIENT), (450, Outcome.TRANSIENT), (452, Outcome.TRANSIENT),
    (550, Outcome.PERMANENT), (554, Outcome.PERMANENT), (599, Outcome.PERMANENT),
    (0, Outcome.TRANSIENT), (-1, Outcome.TRANSIENT), (354, Outcome.TRANSIENT), (199, Outcome.TRANSIENT),
    (600, Outcome.TRANSIENT),
])
def test_classify(code: int, outcome: Outcome) -> None:
    assert classify(code) is outcome


@pytest.mark.parametrize(("code", "message", "status"), [
    (550, "5.1.1 user unknown", "5.1.1"),
    (550, "550 5.1.1 user unknown", "5.1.1"),
    (550, "550-5.1.1 The email account does not exist.\n550 5.1.1 Try again", "5.1.1"),
    (550, "5.1.10 null MX", "5.1.10"),
    (452, "4.2.2 mailbox full", "4.2.2"),
    (250, "2.0.0 OK 1714684579 x12si", "2.0.0"),
    (550, "4.2.2 class disagrees with the code", "5.2.2"),  # RFC 3463: the reply code wins
    (550, "user unknown", "5.0.0"),
    (451, "try later", "4.0.0"),
    (250, "Ok", "2.0.0"),
    (550, "Error 5.1.1 later in the text", "5.0.0"),  # only leading codes count (RFC 2034)
    (550, "5.1.1234 too long a detail", "5.0.0"),
    (0, "no reply", "4.4.1"),
    (-1, "Connection refused", "4.4.1"),
    (354, "odd", "4.0.0"),
])
def test_enhanced_status(code: int, message: str, status: str) -> None:
    assert enhanced_status(code, message) == status


@pytest.mark.parametrize(("code", "message", "subtype"), [
    (550, "5.1.1 user unknown", "NoEmail"),
    (550, "5.1.10 recipient has a null MX", "NoEmail"),
    (550, "No such user here", "NoEmail"),
    (550, "Recipient address rejected: User unknown in virtual mailbox table", "NoEmail"),
    (552, "5.3.4 Message size exceeds fixed limit", "MessageTooLarge"),
    (552, "Message is too long.", "MessageTooLarge"),
    (552, "5.2.2 mailbox full", "General"),
    (550, "5.7.1 rejected by policy", "General"),
    (554, "Transaction failed", "General"),
    (550, "5.7.1 user unknown in text but policy code", "General"),
])
def test_bounce_subtype(code: int, message: str, subtype: str) -> None:
    assert bounce_subtype(code, message) == subtype


@pytest.mark.parametrize(("code", "message", "kind"), [
    (452, "4.2.2 mailbox full", "MailboxFull"),
    (452, "Insufficient system storage", "MailboxFull"),
    (450, "mailbox full, try later", "MailboxFull"),
    (452, "4.5.3 too many recipients", "RecipientServerError"),
    (0, "timed out", "TransientCommunicationFailure"),
    (-1, "Connection refused", "TransientCommunicationFailure"),
    (421, "4.4.2 connection dropped", "TransientCommunicationFailure"),
    (421, "Service not available", "RecipientServerError"),
    (451, "4.7.1 greylisted", "RecipientServerError"),
    (354, "odd", "General"),
])
def test_delay_type(code: int, message: str, kind: str) -> None:
    assert delay_type(code, message) == kind
