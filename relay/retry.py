# Delivery retry policy: the doubling backoff, when to give up, and how an upstream
# SMTP reply maps to an outcome, an RFC 3463 enhanced status code and the SES
# bounceSubType / delayType vocabulary. Pure: times are plain numbers passed in.
from __future__ import annotations

import enum
import re
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    first_delay: float = 5.0  # seconds before the first retry
    max_delay: float = 300.0  # cap of the doubling backoff
    # Give up (bounce) this long after acceptance; SES's MaxDeliverySeconds default is 4 h.
    max_delivery_seconds: float = 14400.0

    def __post_init__(self) -> None:
        if not self.first_delay > 0:
            raise ValueError(f"first_delay must be > 0, got {self.first_delay!r}")
        if not self.max_delay >= self.first_delay:
            raise ValueError(f"max_delay must be >= first_delay, got {self.max_delay!r}")
        if not self.max_delivery_seconds > 0:
            raise ValueError(f"max_delivery_seconds must be > 0, got {self.max_delivery_seconds!r}")


def backoff(policy: RetryPolicy, attempts: int) -> float:
    """Seconds to wait after the `attempts`-th failed attempt (1-based)."""
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts!r}")
    # The exponent is clamped so huge attempt counts cannot overflow a float.
    return min(policy.first_delay * 2.0 ** min(attempts - 1, 1000), policy.max_delay)


def next_attempt_at(policy: RetryPolicy, *, accepted_at: float, now: float, attempts: int) -> float | None:
    """When to try again, or None when that would be past the delivery deadline (then bounce)."""
    at = now + backoff(policy, attempts)
    if at > accepted_at + policy.max_delivery_seconds:
        return None
    return at


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


def classify(code: int) -> Outcome:
    """RFC 5321 §4.2.1: 2yz done, 4yz try again later, 5yz never."""
    if 200 <= code <= 299:
        return Outcome.DELIVERED
    if 500 <= code <= 599:
        return Outcome.PERMANENT
    # 4yz, and anything unexpected: 0/-1 (no reply, connection failure), 1yz, 3yz.
    return Outcome.TRANSIENT


# RFC 3463 §2: class "." subject "." detail, subject and detail 1 to 3 digits. RFC 2034 §4
# puts it first in the reply text, after the reply code; each line of a multiline reply
# repeats it, so the first one found is enough.
_ENHANCED = re.compile(r"^(?:\d{3}[ -])?([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")


def _class_digit(code: int) -> str:
    return {Outcome.DELIVERED: "2", Outcome.TRANSIENT: "4", Outcome.PERMANENT: "5"}[classify(code)]


def _found_status(message: str) -> tuple[str, str, str] | None:
    m = _ENHANCED.match(message.lstrip())
    if m is None:
        return None
    return m.group(1), m.group(2), m.group(3)


def enhanced_status(code: int, message: str) -> str:
    """The RFC 3463 status for a reply: from its text if given, else derived from the code.

    The class digit always follows classify(code): RFC 3463 §3.1 requires it to agree with
    the reply code, and a server that says "550 4.2.2" is still refusing permanently.
    """
    klass = _class_digit(code)
    found = _found_status(message)
    if found is not None:
        return f"{klass}.{found[1]}.{found[2]}"
    if code <= 0:
        return "4.4.1"  # RFC 3463 X.4.1: no answer from host / connection failed
    return f"{klass}.0.0"


def _subject_detail(code: int, message: str) -> str:
    found = _found_status(message)
    return f"{found[1]}.{found[2]}" if found else ""


# Texts of 550 replies that mean "no such mailbox" when no enhanced code says so.
_NO_MAILBOX = re.compile(
    r"user unknown|unknown user|no such (?:user|mailbox|recipient)|mailbox (?:unavailable|not found)"
    r"|recipient (?:unknown|not found|address rejected)|does not exist|invalid (?:mailbox|recipient)",
    re.IGNORECASE,
)
_MAILBOX_FULL = re.compile(r"mailbox (?:is )?full|over ?quota|quota exceeded|insufficient storage",
                           re.IGNORECASE)


def bounce_subtype(code: int, message: str) -> str:
    """SES bounceSubType for a permanent failure: NoEmail, MessageTooLarge or General."""
    sd = _subject_detail(code, message)
    # RFC 3463: X.1.1 bad destination mailbox, X.1.10 recipient address has null MX (RFC 7505).
    if sd in ("1.1", "1.10"):
        return "NoEmail"
    # RFC 3463 X.3.4 message too big for system; RFC 5321 §4.5.3.1.10: 552 too much mail data.
    if sd == "3.4" or (code == 552 and not sd):
        return "MessageTooLarge"
    if code == 550 and not sd and _NO_MAILBOX.search(message):
        return "NoEmail"
    return "General"


def delay_type(code: int, message: str) -> str:
    """SES DeliveryDelay delayType for a transient failure."""
    if code <= 0:
        return "TransientCommunicationFailure"  # no reply at all: refused, timed out, dropped
    sd = _subject_detail(code, message)
    # RFC 3463 X.2.2 mailbox full; RFC 5321 452 insufficient system storage.
    if sd == "2.2" or (code == 452 and not sd) or (400 <= code <= 499 and _MAILBOX_FULL.search(message)):
        return "MailboxFull"
    if sd.startswith("4."):
        return "TransientCommunicationFailure"  # RFC 3463 X.4.Z: network and routing status
    if 400 <= code <= 499:
        return "RecipientServerError"
    return "General"
