# Pure: what one delivery attempt's upstream replies mean, per recipient —
# delivered, deferred (retry at a time) or bounced — and the SES events and DSN
# entries that follow. The delivery worker only applies the verdict.
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from relay.dsn import FailedRecipient
from relay.events import records
from relay.retry import Outcome, RetryPolicy, bounce_subtype, classify, delay_type, enhanced_status, next_attempt_at

# In the message of a Reply with code 0 when relay itself failed on a copy (a bug, a
# library refusing an address), as opposed to an upstream that did not answer.
INTERNAL_ERROR = "internal error"


@dataclass(frozen=True)
class Reply:
    code: int  # SMTP reply code; 0 when there was no reply (connection failed, timeout)
    message: str
    remote: str = ""  # the host that answered, for Remote-MTA / reportingMTA
    # Not sent at all by relay's own decision (suppression list, unsubscribed): the
    # Bounce's bounceSubType (SES's OnAccountSuppressionList, UnsubscribedRecipient).
    # No DSN goes to the sender for it: the event is the report, as with SES.
    refused: str | None = None

    def __str__(self) -> str:
        return f"{self.code} {self.message}" if self.code else self.message


@dataclass(kw_only=True)
class Verdict:
    delivered: list[tuple[str, str]] = field(default_factory=list)  # (rcpt, reply)
    bounced: list[tuple[str, str]] = field(default_factory=list)  # (rcpt, reason)
    deferred: list[tuple[str, int, float, str]] = field(default_factory=list)  # (rcpt, attempts, retry at, reply)
    failed: list[FailedRecipient] = field(default_factory=list)  # for the DSN
    events: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # (SES record, rcpt)


def judge(*, mail: records.MailInfo, attempts: Mapping[str, int], replies: Mapping[str, Reply],
          accepted_at: float, now: float, policy: RetryPolicy, reporting_mta: str,
          feedback_id: str) -> Verdict:
    """Classify each recipient's reply (RFC 5321 §4.2.1: 2xx done, 4xx retry, 5xx fail)."""
    v = Verdict()
    now_dt = datetime.fromtimestamp(now, timezone.utc)
    for rcpt, reply in replies.items():
        text = str(reply)
        outcome = classify(reply.code)
        if outcome is Outcome.DELIVERED:
            v.delivered.append((rcpt, text))
            v.events.append((records.delivery_event(
                mail, recipients=[rcpt], timestamp=now_dt, smtp_response=text,
                reporting_mta=reporting_mta, remote_mta_ip=reply.remote or None), rcpt))
            continue
        tries = attempts.get(rcpt, 0) + 1
        status = enhanced_status(reply.code, reply.message)
        retry_at = None
        if outcome is Outcome.TRANSIENT:
            retry_at = next_attempt_at(policy, accepted_at=accepted_at, now=now, attempts=tries)
        if retry_at is not None:
            v.deferred.append((rcpt, tries, retry_at, text))
            expires = datetime.fromtimestamp(accepted_at + policy.max_delivery_seconds, timezone.utc)
            v.events.append((records.delivery_delay_event(
                mail, recipients=[records.DelayedRecipient(
                    email_address=rcpt, status=status, diagnostic_code=f"smtp; {text}")],
                delay_type=delay_type(reply.code, reply.message), expiration_time=expires,
                timestamp=now_dt, reporting_mta=reporting_mta), rcpt))
            continue
        if reply.refused is not None:
            bounce_type, sub = "Permanent", reply.refused
        elif outcome is Outcome.TRANSIENT:  # retried until max_delivery_seconds: give up
            status, bounce_type, sub = "5.4.7", "Transient", "General"  # RFC 3463: delivery time expired
            text = f"{text} (gave up after {tries} attempts: delivery time expired)"
        else:
            bounce_type, sub = "Permanent", bounce_subtype(reply.code, reply.message)
        v.bounced.append((rcpt, text))
        if reply.refused is None:
            v.failed.append(FailedRecipient(recipient=rcpt, status=status, diagnostic=text,
                                            remote_mta=reply.remote or None))
        v.events.append((records.bounce_event(
            mail, recipients=[records.BouncedRecipient(
                email_address=rcpt, status=status, diagnostic_code=f"smtp; {text}")],
            bounce_type=bounce_type, bounce_sub_type=sub, timestamp=now_dt,
            feedback_id=feedback_id, reporting_mta=reporting_mta), rcpt))
    return v
