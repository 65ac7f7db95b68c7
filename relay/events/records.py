# SES event-publishing records (reference §3): plain dicts ready for json.dumps, built from
# the MailInfo captured when a message is accepted. Where relay differs from SES: each tracked
# copy goes to one recipient, so the `mail` object stays exactly as SES has it and the
# recipient is added as "recipient" inside the open / click / failure child object.
from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.policy import default as _default_policy
from email.utils import formataddr, getaddresses
from json.encoder import encode_basestring as _json_str  # json.dumps's own, for ensure_ascii=False
from typing import Any

from relay.headers import header_fields, split_header_block

Record = dict[str, Any]

HEADERS_LIMIT = 10240  # SES: mail.headers stops at 10 KB, then headersTruncated is true
# SES accepts at most 50 recipients per message, so its mail.destination never lists more.
# relay may be configured for more (smtp.max_recipients); its events then list the first 50,
# else each of N per-recipient events would carry all N addresses (O(N^2) bytes: 2.4 GB of
# Delivery events for one message to 10,000). The event's own recipient is always in its
# child object (delivery.recipients, open.recipient, ...).
DESTINATION_LIMIT = 50

# eventType -> the name an event destination's matching_event_types uses for it.
EVENT_TYPE_KEYS: dict[str, str] = {
    "Send": "send",
    "Reject": "reject",
    "Bounce": "bounce",
    "Complaint": "complaint",
    "Delivery": "delivery",
    "Open": "open",
    "Click": "click",
    "Rendering Failure": "renderingFailure",
    "DeliveryDelay": "deliveryDelay",
    "Subscription": "subscription",
}

_SURROGATE = re.compile("[\ud800-\udfff]")
_ADDRESS_HEADERS = (("from", "from"), ("reply-to", "replyTo"), ("to", "to"), ("cc", "cc"), ("bcc", "bcc"))


@dataclass(frozen=True, kw_only=True)
class MailInfo:
    """What every event says about a message: the SES `mail` object."""

    message_id: str
    timestamp: datetime  # acceptance time, tz-aware UTC
    source: str  # envelope MAIL FROM
    destination: tuple[str, ...]  # all envelope recipients
    headers: tuple[tuple[str, str], ...]  # as submitted, in order, cut at 10 KB
    headers_truncated: bool
    common_headers: dict[str, Any]  # from/to/cc/bcc/replyTo (lists), subject/messageId/date
    tags: dict[str, list[str]]  # auto tags (ses:*) and message tags


@dataclass(frozen=True, kw_only=True)
class BouncedRecipient:
    email_address: str
    action: str = "failed"  # RFC 3464 Action
    status: str  # RFC 3463, e.g. "5.1.1"
    diagnostic_code: str  # as SES writes it: "smtp; 550 5.1.1 user unknown"


@dataclass(frozen=True, kw_only=True)
class DelayedRecipient:
    email_address: str
    status: str  # RFC 3463, e.g. "4.4.1"
    diagnostic_code: str  # "smtp; 421 4.4.0 try again later"


def iso(ts: datetime) -> str:
    """SES timestamp format: UTC, milliseconds (truncated, never rounded up), "Z"."""
    if ts.tzinfo is None:
        raise ValueError(f"timestamp must be timezone-aware: {ts!r}")
    u = ts.astimezone(UTC)
    return (f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}"
            f".{u.microsecond // 1000:03d}Z")


def mail_info(*, message_id: str, timestamp: datetime, source: str, destination: Sequence[str],
              header_block: bytes, configuration_set: str | None, message_tags: dict[str, list[str]],
              source_ip: str, caller_identity: str | None,
              headers: Sequence[tuple[str, str]] = ()) -> MailInfo:
    """The MailInfo of an accepted message. Never raises on garbage headers.

    `headers`: header_block's fields when the caller has parsed them already (intake).
    """
    if timestamp.tzinfo is None:
        raise ValueError(f"timestamp must be timezone-aware: {timestamp!r}")
    all_headers = list(headers) if headers else _parse_headers(header_block)
    kept: list[tuple[str, str]] = []
    total = 0
    for name, value in all_headers:
        total += len(name) + len(value)
        if total > HEADERS_LIMIT:
            break
        kept.append((name, value))
    common, from_pairs = _common_and_from(all_headers)

    # Reference §3.3 auto tags, then the message's own tags (X-SES-MESSAGE-TAGS).
    tags: dict[str, list[str]] = {}
    if configuration_set:
        tags["ses:configuration-set"] = [configuration_set]
    tags["ses:source-ip"] = [source_ip]
    domain = _from_domain(from_pairs)
    if domain:
        tags["ses:from-domain"] = [domain]
    if caller_identity:
        tags["ses:caller-identity"] = [caller_identity]
    for name, values in message_tags.items():
        tags.setdefault(name, []).extend(values)

    return MailInfo(
        message_id=message_id, timestamp=timestamp.astimezone(UTC), source=source,
        destination=tuple(destination), headers=tuple(kept),
        headers_truncated=len(kept) < len(all_headers), common_headers=common, tags=tags,
    )


def mail_object(info: MailInfo) -> Record:
    """The SES `mail` object (sourceArn and sendingAccountId have no meaning for relay)."""
    return {
        "timestamp": iso(info.timestamp),
        "source": info.source,
        "messageId": info.message_id,
        "destination": list(info.destination[:DESTINATION_LIMIT]),
        "headersTruncated": info.headers_truncated,
        "headers": [{"name": name, "value": value} for name, value in info.headers],
        "commonHeaders": {k: list(v) if isinstance(v, list) else v for k, v in info.common_headers.items()},
        "tags": {name: list(values) for name, values in info.tags.items()},
    }


def send_event(info: MailInfo) -> Record:
    return _event("Send", info, "send", {})


def reject_event(info: MailInfo, *, reason: str) -> Record:
    return _event("Reject", info, "reject", {"reason": reason})


def delivery_event(info: MailInfo, *, recipients: Sequence[str], timestamp: datetime, smtp_response: str,
                   reporting_mta: str, remote_mta_ip: str | None) -> Record:
    child: Record = {
        "timestamp": iso(timestamp),
        # Computed from the printed millisecond values, so the three numbers always agree;
        # never negative, even if the wall clock stepped back.
        "processingTimeMillis": max(0, _millis(timestamp) - _millis(info.timestamp)),
        "recipients": list(recipients),
        "smtpResponse": smtp_response,
        "reportingMTA": reporting_mta,
    }
    if remote_mta_ip is not None:
        child["remoteMtaIp"] = remote_mta_ip
    return _event("Delivery", info, "delivery", child)


def bounce_event(info: MailInfo, *, recipients: Sequence[BouncedRecipient], bounce_type: str,
                 bounce_sub_type: str, timestamp: datetime, feedback_id: str, reporting_mta: str) -> Record:
    """`reporting_mta` is a host name; SES writes it as in a DSN, "dns; host"."""
    return _event("Bounce", info, "bounce", {
        "bounceType": bounce_type,
        "bounceSubType": bounce_sub_type,
        "bouncedRecipients": [
            {"emailAddress": r.email_address, "action": r.action, "status": r.status,
             "diagnosticCode": r.diagnostic_code}
            for r in recipients
        ],
        "timestamp": iso(timestamp),
        "feedbackId": feedback_id,
        "reportingMTA": f"dns; {reporting_mta}",
    })


def complaint_event(info: MailInfo, *, recipients: Sequence[str], timestamp: datetime, feedback_id: str,
                    feedback_type: str | None, user_agent: str | None, arrival_date: datetime | None,
                    sub_type: str | None = None) -> Record:
    """SES §3.5: userAgent, complaintFeedbackType and arrivalDate only when the complaint
    came as a feedback report (RFC 5965), as SES does."""
    child: Record = {
        "complainedRecipients": [{"emailAddress": r} for r in recipients],
        "timestamp": iso(timestamp),
        "feedbackId": feedback_id,
        "complaintSubType": sub_type,
    }
    if user_agent is not None:
        child["userAgent"] = user_agent
    if feedback_type is not None:
        child["complaintFeedbackType"] = feedback_type
    if arrival_date is not None:
        child["arrivalDate"] = iso(arrival_date)
    return _event("Complaint", info, "complaint", child)


def delivery_delay_event(info: MailInfo, *, recipients: Sequence[DelayedRecipient], delay_type: str,
                         expiration_time: datetime, timestamp: datetime, reporting_mta: str) -> Record:
    return _event("DeliveryDelay", info, "deliveryDelay", {
        "timestamp": iso(timestamp),
        "delayType": delay_type,
        "expirationTime": iso(expiration_time),
        "delayedRecipients": [
            {"emailAddress": r.email_address, "status": r.status, "diagnosticCode": r.diagnostic_code}
            for r in recipients
        ],
        "reportingMTA": reporting_mta,
    })


def open_event(info: MailInfo, *, recipient: str, timestamp: datetime, ip_address: str,
               user_agent: str) -> Record:
    return _event("Open", info, "open", {
        "ipAddress": ip_address,
        "timestamp": iso(timestamp),
        "userAgent": user_agent,
        "recipient": recipient,
    })


def click_event(info: MailInfo, *, recipient: str, timestamp: datetime, ip_address: str, user_agent: str,
                link: str, link_tags: dict[str, list[str]]) -> Record:
    """`link` is the original URL, not the tracking one; linkTags is always present ({} if none)."""
    return _event("Click", info, "click", {
        "ipAddress": ip_address,
        "timestamp": iso(timestamp),
        "userAgent": user_agent,
        "link": link,
        "linkTags": {name: list(values) for name, values in link_tags.items()},
        "recipient": recipient,
    })


# --- open / click events as JSON text, for the tracking hit path -------------------
# A hit's record is the message's `mail` object (the same for every hit on that
# message: serialized once, see mail_json) and a small child object. These build the
# exact text EventBus would make of open_event()/click_event() (json.dumps with
# separators=(",", ":") and ensure_ascii=False): tests pin that they agree.


def event_json(record: Record) -> str:
    """An event record as the event bus stores it."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


def mail_json(info: MailInfo) -> str:
    """The `mail` object's JSON text (what every event on this message embeds)."""
    return event_json(mail_object(info))


def iso_seconds(seconds: float) -> str:
    """iso() of a unix time in seconds (milliseconds truncated, as iso() does)."""
    ms = int(seconds * 1000)
    return f"{_iso_second(ms // 1000)}.{ms % 1000:03d}Z"


_SECONDS: dict[int, str] = {}  # a few recent seconds' "YYYY-MM-DDTHH:MM:SS"


def _iso_second(second: int) -> str:
    text = _SECONDS.get(second)
    if text is None:
        if len(_SECONDS) > 64:
            _SECONDS.clear()
        text = _SECONDS[second] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return text


def open_event_json(mail: str, *, recipient: str, timestamp: str, ip_address: str, user_agent: str) -> str:
    """json of open_event(): `mail` from mail_json(), `timestamp` from iso()."""
    return (f'{{"eventType":"Open","mail":{mail},"open":{{"ipAddress":{_json_str(ip_address)},'
            f'"timestamp":{_json_str(timestamp)},"userAgent":{_json_str(user_agent)},'
            f'"recipient":{_json_str(recipient)}}}}}')


def click_event_json(mail: str, *, recipient: str, timestamp: str, ip_address: str, user_agent: str,
                     link: str, link_tags: str) -> str:
    """json of click_event(): `link_tags` is the tags dict's JSON text (event_json(tags))."""
    return (f'{{"eventType":"Click","mail":{mail},"click":{{"ipAddress":{_json_str(ip_address)},'
            f'"timestamp":{_json_str(timestamp)},"userAgent":{_json_str(user_agent)},'
            f'"link":{_json_str(link)},"linkTags":{link_tags},"recipient":{_json_str(recipient)}}}}}')


@dataclass(frozen=True, kw_only=True)
class TopicPreferences:
    """SES TopicPreferences of one contact: unsubscribed from the whole list, and per topic."""

    unsubscribe_all: bool
    topics: tuple[tuple[str, str], ...]  # (topicName, "OptIn" | "OptOut"), sorted by name

    def as_record(self) -> Record:
        return {"unsubscribeAll": self.unsubscribe_all,
                "topicSubscriptionStatus": [{"topicName": name, "subscriptionStatus": status}
                                            for name, status in self.topics]}


def subscription_event(info: MailInfo, *, recipient: str, contact_list: str, timestamp: datetime, source: str,
                       new: TopicPreferences, old: TopicPreferences) -> Record:
    """SES §3.8. `source`: "UnsubscribeHeader" (a mailbox provider's one-click POST, RFC
    8058) or "UnsubscribeLink" (the confirmation page's button). The recipient is added,
    as in the open and click objects."""
    return _event("Subscription", info, "subscription", {
        "contactList": contact_list,
        "timestamp": iso(timestamp),
        "source": source,
        "newTopicPreferences": new.as_record(),
        "oldTopicPreferences": old.as_record(),
        "recipient": recipient,
    })


def rendering_failure_event(info: MailInfo, *, error_message: str, recipient: str | None = None) -> Record:
    """SES's "failure" object also has templateName; relay has no templates, so it is left out."""
    child: Record = {"errorMessage": error_message}
    if recipient is not None:
        child["recipient"] = recipient
    return _event("Rendering Failure", info, "failure", child)


def _event(event_type: str, info: MailInfo, key: str, child: Record) -> Record:
    return {"eventType": event_type, "mail": mail_object(info), key: child}


def _millis(ts: datetime) -> int:
    if ts.tzinfo is None:
        raise ValueError(f"timestamp must be timezone-aware: {ts!r}")
    delta = ts - datetime(1970, 1, 1, tzinfo=UTC)
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


def _parse_headers(block: bytes) -> list[tuple[str, str]]:
    """(name, value) pairs as submitted: unfolded (RFC 5322 §2.2.3), encoded-words kept.

    Lines that are not fields (and their continuations) are skipped; reading stops at the
    first blank line, in case a whole message is passed.
    """
    return [(f.name, f.value) for f in header_fields(split_header_block(block)[0])]


def _common_and_from(headers: Sequence[tuple[str, str]]) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
    """SES commonHeaders from the first occurrence of each field, RFC 2047 words decoded;
    and the first From field's _addresses() (None without one), for ses:from-domain."""
    first: dict[str, str] = {}
    for name, value in headers:
        first.setdefault(name.lower(), value)
    common: dict[str, Any] = {}
    from_pairs: list[tuple[str, str]] | None = None
    for field, key in _ADDRESS_HEADERS:
        if field in first:
            pairs = _addresses(field, first[field])
            if field == "from":
                from_pairs = pairs
            common[key] = [text for text, _ in pairs]
    if "date" in first:
        common["date"] = first["date"]
    if "message-id" in first:
        common["messageId"] = first["message-id"]
    if "subject" in first:
        common["subject"] = _unstructured(first["subject"])
    return common, from_pairs


def _from_domain(from_pairs: list[tuple[str, str]] | None) -> str | None:
    """The domain of the first From field's first address (its _addresses(); None: no From)."""
    for _, addr_spec in from_pairs or ():
        domain = addr_spec.rpartition("@")[2].strip().lower()
        if "@" in addr_spec and domain:
            return domain
    return None


def _addresses(field: str, value: str) -> list[tuple[str, str]]:
    """(display form, addr-spec) per address; falls back to the decoded text if unparsable."""
    if value.isascii() and "=?" not in value:
        # Fast path for the common case (no RFC 2047 words): getaddresses is ~10x
        # cheaper than the header registry and gives the same addresses here.
        pairs = getaddresses([value])
        if pairs and all("@" in a for _, a in pairs):
            return [(formataddr((n, a)) if n else a, a) for n, a in pairs]
    try:
        header = _default_policy.header_factory(field, value)
        found: list[Address] = list(getattr(header, "addresses", ()))
        result = [(_clean(str(a)), _clean(a.addr_spec)) for a in found]
    except Exception:  # noqa: BLE001 - the email package's parser has crashed on odd input before
        result = [(_clean(f"{n} <{a}>" if n else a), _clean(a))
                  for n, a in getaddresses([value]) if a]
    if result:
        return result
    text = _unstructured(value)
    return [(text, "")] if text else []  # e.g. "undisclosed-recipients:;"


def _unstructured(value: str) -> str:
    if "=?" not in value:
        return _clean(value)  # no encoded-words (RFC 2047): nothing to decode
    try:
        return _clean(str(_default_policy.header_factory("subject", value)))
    except Exception:  # noqa: BLE001 - never fail an accepted message over a header
        return _clean(value)


def _clean(text: str) -> str:
    # Undecodable encoded-words leave lone surrogates, which no JSON writer can emit as UTF-8.
    return _SURROGATE.sub("\ufffd", text)


# Events about one recipient: with a destination's mail_destination = "recipient", their
# mail.destination names that recipient only (the others are the message's, not the event's).
PER_RECIPIENT_TYPES = frozenset({"Delivery", "Bounce", "DeliveryDelay", "Open", "Click", "Complaint",
                                 "Subscription"})


def for_recipient(record: Record, recipient: str | None) -> Record:
    """The record with mail.destination = [recipient] when it is a per-recipient event
    with a known recipient; otherwise the record itself. The input is not changed."""
    if recipient is None or record.get("eventType") not in PER_RECIPIENT_TYPES:
        return record
    return {**record, "mail": {**record["mail"], "destination": [recipient]}}
