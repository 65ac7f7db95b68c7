# Pure: what an inbound report means for one sent message — the SES Bounce or
# Complaint records it becomes, for which recipients, and whether they join the
# suppression list. The listener (relay.feedback.listener) finds the message (the VERP
# token, else the returned original's headers) and commits what this decides.
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from relay.events import records
from relay.feedback.classify import classify_bounce
from relay.feedback.reports import BounceReport, ComplaintReport, RecipientStatus

Record = dict[str, Any]

# Addresses in a returned original's headers that may be relay's VERP return path
# (Return-Path:, the MTA's trace, X-Original-To ...): b-<token>@domain.
_VERP_RE = re.compile(r"\bb-[A-Za-z2-7]{20,62}@[A-Za-z0-9.-]+")


@dataclass(frozen=True, kw_only=True)
class Decision:
    events: list[tuple[Record, str]] = field(default_factory=list)  # (SES record, recipient)
    suppress: list[tuple[str, str]] = field(default_factory=list)  # (address, "BOUNCE" | "COMPLAINT")
    ignored: str | None = None  # why nothing is recorded, for the log


def verp_candidates(headers: Iterable[tuple[str, str]]) -> list[str]:
    """Return-path-shaped addresses in the original's headers, Return-Path: first."""
    ordered = sorted(headers, key=lambda h: h[0].lower() != "return-path")
    out: list[str] = []
    for _, value in ordered:
        out += [m for m in _VERP_RE.findall(value[:4096]) if m not in out]
    return out[:8]  # bounded: a hostile report could list thousands


def header_message_id(headers: Iterable[tuple[str, str]]) -> str | None:
    """The original's Message-ID:, as relay recorded it (commonHeaders.messageId)."""
    for name, value in headers:
        if name.lower() == "message-id":
            return value.strip()[:998] or None
    return None


def _matching(statuses: Sequence[RecipientStatus], recipient: str) -> RecipientStatus:
    for s in statuses:
        if s.address.lower() == recipient.lower() or (s.original_recipient or "").lower() == recipient.lower():
            return s
    return statuses[0]


def _mta_host(reporting_mta: str | None, fallback: str) -> str:
    """'dns; mx.example.net' -> 'mx.example.net' (records.bounce_event writes the 'dns; ')."""
    if not reporting_mta:
        return fallback
    return reporting_mta.partition(";")[2].strip() or reporting_mta.strip() or fallback


def bounce(report: BounceReport, *, mail: records.MailInfo, recipients: Sequence[str], now: datetime,
           feedback_id: str, reporting_mta: str, suppress_reasons: frozenset[str]) -> Decision:
    """A DSN about `recipients` of the message (one: the VERP token's; else the DSN's own
    recipients that were among the message's). Only `failed` actions bounce (RFC 3464
    §2.3.3: `delayed` is a warning, `delivered`/`relayed`/`expanded` are not failures)."""
    failed = [s for s in report.recipients if (s.action or "failed") == "failed"]
    if not failed:
        actions = ",".join(sorted({s.action or "-" for s in report.recipients})) or "none"
        return Decision(ignored=f"a DSN without a failed recipient (actions: {actions})")
    if not recipients:
        return Decision(ignored="a DSN about none of the message's recipients")
    d = Decision()
    for rcpt in recipients:
        s = _matching(failed, rcpt)
        bounce_type, sub_type = classify_bounce(s.status, s.diagnostic_code)
        d.events.append((records.bounce_event(
            mail, recipients=[records.BouncedRecipient(
                email_address=rcpt, action="failed", status=s.status or "",
                diagnostic_code=s.diagnostic_code or "")],
            bounce_type=bounce_type, bounce_sub_type=sub_type, timestamp=now, feedback_id=feedback_id,
            reporting_mta=_mta_host(report.reporting_mta, reporting_mta)), rcpt))
        if bounce_type == "Permanent" and "bounce" in suppress_reasons:
            d.suppress.append((rcpt, "BOUNCE"))
    return d


def dsn_recipients(report: BounceReport, destination: Sequence[str]) -> list[str]:
    """The message's recipients a DSN without a VERP token names (case-insensitively)."""
    by_lower = {r.lower(): r for r in destination}
    out: list[str] = []
    for s in report.recipients:
        for a in (s.address, s.original_recipient):
            r = by_lower.get((a or "").lower())
            if r is not None and r not in out:
                out.append(r)
    return out


def complaint(report: ComplaintReport, *, mail: records.MailInfo, recipients: Sequence[str], now: datetime,
              feedback_id: str, suppress_reasons: frozenset[str]) -> Decision:
    if not recipients:
        return Decision(ignored="a complaint about none of the message's recipients")
    d = Decision()
    for rcpt in recipients:
        # One record per recipient (the per-recipient read model); feedback loops name
        # one recipient per report in practice.
        d.events.append((records.complaint_event(
            mail, recipients=[rcpt], timestamp=now, feedback_id=feedback_id,
            feedback_type=report.feedback_type or None, user_agent=report.user_agent,
            arrival_date=report.arrival_date), rcpt))
        if "complaint" in suppress_reasons:
            d.suppress.append((rcpt, "COMPLAINT"))
    return d


def complaint_recipients(report: ComplaintReport, destination: Sequence[str]) -> list[str]:
    """Whom an ARF report without a VERP token is about: its Original-Rcpt-To among the
    message's recipients; else, when the message had one recipient, that one (feedback
    loops often redact the address, RFC 6590)."""
    by_lower = {r.lower(): r for r in destination}
    out = [by_lower[a.lower()] for a in report.original_recipients if a.lower() in by_lower]
    if not out and len(destination) == 1:
        out = [destination[0]]
    return list(dict.fromkeys(out))
