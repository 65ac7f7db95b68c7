# Pure: SES list management for one copy. Parses X-SES-LIST-MANAGEMENT-OPTIONS, adds
# the one-click List-Unsubscribe / List-Unsubscribe-Post header fields (RFC 2369,
# RFC 8058) by splicing the header block, and replaces {{amazonSESUnsubscribeUrl}} in
# the body text parts, decoding and re-encoding each with the instrumentation's helpers.
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from relay.events.records import TopicPreferences
from relay.headers import header_fields, split_header_block
from relay.instrument.headers import set_transfer_encoding
from relay.instrument.mime import (
    Leaf,
    MimeError,
    decode_body,
    encode_body,
    encode_quoted_printable,
    exceeds_line_limit,
    trailing_whitespace,
    walk,
)

PLACEHOLDER = "{{amazonSESUnsubscribeUrl}}"
# SES ContactListName / TopicName: letters, digits, '_' and '-' (relay's reading of SES's rule).
_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ADDED = (b"list-unsubscribe", b"list-unsubscribe-post")
_ENCODED = re.compile(rb"(?i)base64|quoted-printable")  # where a placeholder may hide


@dataclass(frozen=True)
class ListManagement:
    """SES ListManagementOptions: the contact list and the (optional) topic of a message."""

    contact_list: str
    topic: str | None = None

    def to_json(self) -> str:
        return json.dumps({"contactList": self.contact_list, "topic": self.topic}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> ListManagement | None:
        if not text:
            return None
        d = json.loads(text)
        return cls(d["contactList"], d.get("topic"))

    def describe(self) -> str:
        return f"contact list {self.contact_list}" + (f", topic {self.topic}" if self.topic else "")


def parse_options(value: str) -> ListManagement:
    """`<contactList>; topic=<topic>` (topic optional), as SES's header; raises ValueError."""
    name, _, rest = value.partition(";")
    name = name.strip()
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"contact list name {name[:64]!r}: use 1-64 characters A-Z a-z 0-9 _ -")
    rest = rest.strip()
    if not rest:
        return ListManagement(name)
    key, eq, topic = rest.partition("=")
    topic = topic.strip()
    if not eq or key.strip().lower() != "topic":
        raise ValueError(f"expected 'topic=<name>' after ';', got {rest[:64]!r}")
    if not _NAME_RE.fullmatch(topic):
        raise ValueError(f"topic name {topic[:64]!r}: use 1-64 characters A-Z a-z 0-9 _ -")
    return ListManagement(name, topic)


def apply(data: bytes, url: str) -> bytes:
    """The copy with its unsubscribe URL: header fields added, placeholders replaced."""
    return add_headers(replace_placeholder(data, url), url)


def add_headers(data: bytes, url: str) -> bytes:
    """List-Unsubscribe: <url> and List-Unsubscribe-Post: List-Unsubscribe=One-Click (RFC
    8058 §3.1) at the end of the header block, in the message's own line ending. Fields of
    those names the sender put there are removed: two would be ambiguous."""
    block, _ = split_header_block(data)
    eol = b"\r\n" if b"\r\n" in block or b"\n" not in block else b"\n"
    kept = bytearray()
    pos = 0
    for f in header_fields(block):
        if f.name.lower().encode() in _ADDED:
            kept += block[pos:f.start]
            pos = f.end
    kept += block[pos:]
    if kept and not kept.endswith(b"\n"):  # no body at all: the last field had no line ending
        kept += eol
    added = (b"List-Unsubscribe: <" + url.encode("ascii") + b">" + eol
             + b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" + eol)
    # The block keeps its last field's line ending; the blank line and body follow as they were.
    return b"".join((bytes(kept), added, data[len(block):]))


def replace_placeholder(data: bytes, url: str) -> bytes:
    """Every {{amazonSESUnsubscribeUrl}} in text/html and text/plain body parts -> url.

    (SES replaces at most two; relay replaces all, since one left over is a dead link.)
    Parts relay cannot decode faithfully, attachments and signed or encrypted content
    are left as they are; so is the whole message when its MIME structure is broken."""
    if PLACEHOLDER.encode() not in data and not _ENCODED.search(data):
        return data  # no placeholder, not even an encoded one
    try:
        leaves = walk(data)
    except MimeError:
        return data
    out: list[bytes] = []
    position = 0
    for leaf in leaves:
        if leaf.opaque or leaf.attachment or leaf.content_type not in ("text/html", "text/plain"):
            continue
        body = data[leaf.body_start:leaf.body_end]
        try:
            text, charset = decode_body(leaf, body)
        except MimeError:
            continue
        if PLACEHOLDER not in text:
            continue
        filled = text.replace(PLACEHOLDER, _escaped(url) if leaf.content_type == "text/html" else url)
        try:
            start, encoded = _encode(data, leaf, filled, charset, trailing_whitespace(body))
        except UnicodeError:
            continue
        out += [data[position:start], encoded]
        position = leaf.body_end
    if not out:
        return data
    out.append(data[position:])
    return b"".join(out)


def _escaped(url: str) -> str:
    # Inside an attribute or text: '&' as an entity (HTML5 §13.1.2.5); the URL has no quotes.
    return url.replace("&", "&amp;")


def _encode(data: bytes, leaf: Leaf, text: str, charset: str, trailer: bytes) -> tuple[int, bytes]:
    """(where the output starts, the bytes from there to the body's end)."""
    encoded = encode_body(text, charset, leaf, trailer)
    if leaf.transfer_encoding in ("7bit", "8bit") and exceeds_line_limit(encoded, leaf.eol):
        # RFC 5322 §2.1.1: a line is at most 998 octets; the part goes quoted-printable.
        splice = set_transfer_encoding(data, leaf.header_start, leaf.body_start, b"quoted-printable")
        if splice is not None:
            start, head = splice
            return start, head + encode_quoted_printable(text.encode(charset), leaf.eol or b"\r\n")
    return leaf.body_start, encoded


def opted_out(old: TopicPreferences, topic: str | None) -> TopicPreferences:
    """The preferences after a one-click unsubscribe: the topic OptOut, or the whole list."""
    if topic is None:
        return TopicPreferences(unsubscribe_all=True, topics=old.topics)
    topics = dict(old.topics)
    topics[topic] = "OptOut"
    return TopicPreferences(unsubscribe_all=old.unsubscribe_all, topics=tuple(sorted(topics.items())))


def with_topic(preferences: TopicPreferences, topic: str | None) -> TopicPreferences:
    """The preferences with the message's topic listed (OptIn unless recorded): a contact
    relay never saw opt out of a topic was subscribed to it (SES's default OptIn)."""
    if topic is None or topic in dict(preferences.topics):
        return preferences
    return TopicPreferences(unsubscribe_all=preferences.unsubscribe_all,
                            topics=tuple(sorted((*preferences.topics, (topic, "OptIn")))))
