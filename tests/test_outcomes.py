# What an attempt's replies mean, per recipient, as a pure function: table-driven.
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from relay.events.records import MailInfo
from relay.outcomes import Reply, judge
from relay.retry import RetryPolicy

ACCEPTED = 1_800_000_000.0
MAIL = MailInfo(message_id="m1", timestamp=datetime.fromtimestamp(ACCEPTED, timezone.utc), source="a@example.com",
                destination=("b@example.org",), headers=(), headers_truncated=False, common_headers={}, tags={})
POLICY = RetryPolicy(first_delay=5, max_delay=300, max_delivery_seconds=3600)


def run(reply: Reply, *, now: float = ACCEPTED + 1, attempts: int = 0):
    return judge(mail=MAIL, attempts={"b@example.org": attempts}, replies={"b@example.org": reply},
                 accepted_at=ACCEPTED, now=now, policy=POLICY, reporting_mta="relay.test", feedback_id="f1")


def test_2xx_is_delivered_with_a_delivery_event() -> None:
    v = run(Reply(250, "2.0.0 Ok: queued", "127.0.0.1"))
    assert v.delivered == [("b@example.org", "250 2.0.0 Ok: queued")]
    assert not (v.bounced or v.deferred or v.failed)
    (record, rcpt), = v.events
    assert rcpt == "b@example.org" and record["eventType"] == "Delivery"
    assert record["delivery"]["processingTimeMillis"] == 1000
    assert record["delivery"]["remoteMtaIp"] == "127.0.0.1"


@pytest.mark.parametrize("reply, sub, status", [
    (Reply(550, "5.1.1 user unknown"), "NoEmail", "5.1.1"),
    (Reply(552, "5.3.4 message too big"), "MessageTooLarge", "5.3.4"),
    (Reply(554, "5.6.7 Upstream lacks SMTPUTF8"), "General", "5.6.7"),
])
def test_5xx_bounces_permanently(reply: Reply, sub: str, status: str) -> None:
    v = run(reply)
    assert [r for r, _ in v.bounced] == ["b@example.org"] and not v.deferred
    assert v.failed[0].status == status
    bounce = v.events[0][0]["bounce"]
    assert (bounce["bounceType"], bounce["bounceSubType"]) == ("Permanent", sub)
    assert bounce["bouncedRecipients"][0]["diagnosticCode"] == f"smtp; {reply}"


@pytest.mark.parametrize("reply, delay_type", [
    (Reply(451, "4.3.0 try later"), "RecipientServerError"),
    (Reply(452, "4.2.2 mailbox full"), "MailboxFull"),
    (Reply(0, "connection refused"), "TransientCommunicationFailure"),
])
def test_4xx_and_no_reply_defer_with_backoff(reply: Reply, delay_type: str) -> None:
    v = run(reply, attempts=2)
    (rcpt, tries, retry_at, _), = v.deferred
    assert (rcpt, tries) == ("b@example.org", 3)
    assert retry_at == pytest.approx(ACCEPTED + 1 + 20)  # 5 s doubling: third failure waits 20 s
    delay = v.events[0][0]["deliveryDelay"]
    assert delay["delayType"] == delay_type
    assert delay["expirationTime"].startswith(datetime.fromtimestamp(ACCEPTED + 3600, timezone.utc).strftime("%Y-%m-%dT%H:%M"))
    assert not (v.bounced or v.failed)


def test_transient_past_the_window_bounces_as_expired() -> None:
    v = run(Reply(451, "4.3.0 try later"), now=ACCEPTED + 3599, attempts=7)
    assert not v.deferred and v.failed[0].status == "5.4.7"
    bounce = v.events[0][0]["bounce"]
    assert bounce["bounceType"] == "Transient" and "delivery time expired" in v.bounced[0][1]


def test_mixed_replies_each_judged_alone() -> None:
    v = judge(mail=MAIL, attempts={"a@x.test": 0, "b@x.test": 0, "c@x.test": 0},
              replies={"a@x.test": Reply(250, "ok"), "b@x.test": Reply(550, "no"), "c@x.test": Reply(421, "busy")},
              accepted_at=ACCEPTED, now=ACCEPTED, policy=POLICY, reporting_mta="relay.test", feedback_id="f")
    assert [r for r, _ in v.delivered] == ["a@x.test"]
    assert [r for r, _ in v.bounced] == ["b@x.test"]
    assert [r[0] for r in v.deferred] == ["c@x.test"]
    assert [e["eventType"] for e, _ in v.events] == ["Delivery", "Bounce", "DeliveryDelay"]
