# Pure: the account suppression list's vocabulary (SES's BOUNCE / COMPLAINT reasons),
# its CSV (the shape of SES's bulk import: an "emailAddress,reason" header, one address
# a line) and the replies relay gives itself for a recipient it will not send to.
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from relay.outcomes import Reply

REASONS = ("BOUNCE", "COMPLAINT")  # SES SuppressionListReason
CSV_HEADER = ("emailAddress", "reason")
# A bare addr-spec, as RFC 5321 paths carry it: local@domain, no spaces or brackets.
_ADDRESS_RE = re.compile(r"[^@\s<>,;\"]{1,64}@[^@\s<>,;\"]{1,255}")


@dataclass(frozen=True)
class SuppressedAddress:
    """One entry of the list (SES SuppressedDestination)."""

    address: str  # lower-cased: the list is keyed by address, whatever its case in mail
    reason: str  # BOUNCE | COMPLAINT
    last_update: float  # unix seconds
    message_id: str | None  # the message whose bounce or complaint put it there

    def as_json(self) -> dict[str, str | None]:
        """SES's field names (SuppressedDestinationSummary), plus the message id."""
        return {"emailAddress": self.address, "reason": self.reason,
                "lastUpdateTime": _iso(self.last_update), "messageId": self.message_id}


class CsvError(ValueError):
    """A file with bad lines: each (line number, what is wrong); nothing of it is imported."""

    def __init__(self, problems: list[tuple[int, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"line {n}: {why}" for n, why in problems))


def normalize(address: str) -> str:
    return address.strip().lower()


def valid_address(address: str) -> bool:
    return bool(_ADDRESS_RE.fullmatch(address))


def reason(value: str) -> str:
    """BOUNCE or COMPLAINT from any case; raises ValueError."""
    upper = value.strip().upper()
    if upper not in REASONS:
        raise ValueError(f"reason must be BOUNCE or COMPLAINT, not {value.strip()[:32]!r}")
    return upper


def applies(entry: SuppressedAddress, suppressed_reasons: frozenset[str]) -> bool:
    """Whether an entry stops mail of a set suppressing these reasons (config spelling)."""
    return entry.reason.lower() in suppressed_reasons


def parse_csv(text: str) -> list[tuple[str, str]]:
    """(address, reason) per line of an import file; raises CsvError listing every bad line.

    The first line must be the header emailAddress,reason (any case); blank lines are
    skipped; an address twice keeps its last reason."""
    problems: list[tuple[int, str]] = []
    rows: dict[str, str] = {}
    lines = text.splitlines()
    if not lines or [c.strip().lower() for c in lines[0].split(",")] != [h.lower() for h in CSV_HEADER]:
        raise CsvError([(1, "expected the header emailAddress,reason")])
    for n, fields in enumerate(csv.reader(lines[1:]), start=2):
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != 2:
            problems.append((n, f"expected 2 fields (emailAddress,reason), got {len(fields)}"))
            continue
        address = normalize(fields[0])
        if not valid_address(address):
            problems.append((n, f"not an email address: {fields[0].strip()[:80]!r}"))
            continue
        try:
            rows[address] = reason(fields[1])
        except ValueError as e:
            problems.append((n, str(e)))
    if problems:
        raise CsvError(problems)
    return list(rows.items())


def render_csv(entries: list[SuppressedAddress]) -> str:
    """The list as an import file (so export | import round-trips)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for e in entries:
        writer.writerow((e.address, e.reason))
    return out.getvalue()


def suppressed_reply(address: str, entry: SuppressedAddress) -> Reply:
    """SES: mail to a suppressed address is not sent; a Permanent bounce, subtype
    OnAccountSuppressionList (no DSN: the event is the report)."""
    return Reply(550, f"5.1.1 <{address}>: on the account suppression list ({entry.reason} since "
                      f"{_iso(entry.last_update)})", refused="OnAccountSuppressionList")


def unsubscribed_reply(address: str, where: str) -> Reply:
    """SES's newer subtype for a contact who opted out of the message's list or topic."""
    return Reply(550, f"5.7.1 <{address}>: unsubscribed from {where}", refused="UnsubscribedRecipient")


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
