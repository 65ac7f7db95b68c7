# Pure intake policy: from the bytes received after DATA to what gets spooled.
# Picks the configuration set, parses message tags, strips SES control headers
# (splicing the original bytes) and prepends the relay's Received: trace header.
from __future__ import annotations

import os
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from typing import cast

from relay.config import Config, ConfigurationSet
from relay.errors import Rejected
from relay.headers import HeaderField, header_fields, split_header_block
from relay.unsubscribe import ListManagement, parse_options

# SES control headers that never reach the recipient (SES removes them before sending).
SES_CONTROL_HEADERS = (
    "x-ses-configuration-set", "x-ses-message-tags", "x-ses-source-arn", "x-ses-from-arn",
    "x-ses-return-path-arn", "x-ses-list-management-options", "x-ses-tenant",
)
# SES MessageTag rule: names and values are ASCII letters, digits, '_' and '-', <= 256 chars.
TAG_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


@dataclass(frozen=True, kw_only=True)
class Accepted:
    """What intake decided for one message; the spool stores it."""

    message_id: str
    configuration_set: ConfigurationSet | None
    tags: dict[str, list[str]]
    header_block: bytes  # as submitted, for the events' mail.headers
    headers: tuple[tuple[str, str], ...] = ()  # header_block's fields (name, unfolded value), parsed once
    data: bytes  # what goes upstream: control headers removed, Received: prepended
    list_management: ListManagement | None = None  # X-SES-LIST-MANAGEMENT-OPTIONS


def new_message_id(now: float | None = None) -> str:
    """SES-shaped id: 16 hex of epoch milliseconds (so ids sort by time), a UUID, -000000."""
    ms = int((time.time() if now is None else now) * 1000)
    return f"{ms:016x}-{uuid.UUID(bytes=os.urandom(16), version=4)}-000000"


def parse_tags(value: str) -> dict[str, list[str]]:
    """X-SES-MESSAGE-TAGS: 'name=value, name2=value2' -> {name: [value]}; raises Rejected."""
    tags: dict[str, list[str]] = {}
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        name, eq, val = item.partition("=")
        name, val = name.strip(), val.strip()
        if not eq:
            raise Rejected(f"554 Transaction failed: Invalid message tag '{item}': expected name=value.")
        for what, s in (("name", name), ("value", val)):
            if not TAG_RE.match(s):
                raise Rejected(
                    f"554 Transaction failed: Invalid message tag {what} '{s[:64]}': "
                    "use 1-256 characters A-Z a-z 0-9 _ -."
                )
        if name.startswith("ses:"):  # cannot happen given TAG_RE, kept for clarity
            raise Rejected(f"554 Transaction failed: Tag name '{name}' is reserved.")
        tags.setdefault(name, []).append(val)
    return tags


def received_header(*, hostname: str, helo: str | None, peer_ip: str, message_id: str,
                    recipients: list[str], now: datetime) -> bytes:
    """The trace header a relay must prepend (RFC 5321 §4.4)."""
    helo_part = f"{helo} " if helo else ""
    for_part = f"\r\n\tfor <{recipients[0]}>" if len(recipients) == 1 else ""
    line = (f"Received: from {helo_part}([{peer_ip}])\r\n\tby {hostname} (relay) with ESMTP id "
            f"{message_id}{for_part};\r\n\t{format_datetime(now)}\r\n")
    return line.encode("utf-8", "replace")


def accept(data: bytes | bytearray, *, config: Config, helo: str | None, peer_ip: str, recipients: list[str],
           now: datetime, message_id: str | None = None) -> Accepted:
    """Decide what to do with a message received after DATA; raises Rejected with the reply.

    `data` is only read: what is spooled is built in one copy (a 40 MB message must not
    cost several times that in memory).
    """
    smtp = config.smtp
    block, body_at = split_header_block(cast(bytes, data))  # it only searches and slices: any buffer
    block = bytes(block)
    fields = header_fields(block)
    cs_name = smtp.config_set_header.lower()
    tags_name = smtp.tags_header.lower()

    set_values = [f.value for f in fields if f.name.lower() == cs_name]
    if len(set_values) > 1:
        raise Rejected(f"554 Transaction failed: Duplicate header '{smtp.config_set_header}'.")
    name = set_values[0] if set_values else smtp.default_configuration_set
    cset = None
    if name is not None:
        cset = config.configuration_sets.get(name)
        if cset is None:
            raise Rejected(f"554 Transaction failed: Configuration set <{name[:64]}> does not exist.")

    tags: dict[str, list[str]] = {}
    for f in fields:
        if f.name.lower() == tags_name:
            for k, v in parse_tags(f.value).items():
                tags.setdefault(k, []).extend(v)

    lists = _list_management(fields)

    strip = set(SES_CONTROL_HEADERS) | {cs_name, tags_name}
    kept = bytearray()
    pos = 0
    for f in fields:
        if f.name.lower() in strip:
            kept += block[pos:f.start]
            pos = f.end
    kept += block[pos:]

    mid = message_id or new_message_id()
    trace = received_header(hostname=smtp.hostname, helo=helo, peer_ip=peer_ip,
                            message_id=mid, recipients=recipients, now=now)
    if b"\r\n" not in block and b"\n" in data:
        trace = trace.replace(b"\r\n", b"\n")  # keep the message's own line endings
    out = b"".join((trace, kept, memoryview(data)[len(block):]))  # no slice copy of the body
    return Accepted(message_id=mid, configuration_set=cset, tags=tags,
                    header_block=block, headers=tuple((f.name, f.value) for f in fields), data=out,
                    list_management=lists)


def _list_management(fields: list[HeaderField]) -> ListManagement | None:
    """SES ListManagementOptions from X-SES-LIST-MANAGEMENT-OPTIONS; raises Rejected."""
    values = [f.value for f in fields if f.name.lower() == "x-ses-list-management-options"]
    if not values:
        return None
    if len(values) > 1:
        raise Rejected("554 Transaction failed: Duplicate header 'X-SES-LIST-MANAGEMENT-OPTIONS'.")
    try:
        return parse_options(values[0])
    except ValueError as e:
        raise Rejected(f"554 Transaction failed: Invalid X-SES-LIST-MANAGEMENT-OPTIONS: {e}.") from None
