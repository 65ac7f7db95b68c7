# Signed, self-contained tracking tokens for the /o/ (open), /c/ (click) and /u/
# (unsubscribe) URLs.
# A token carries its whole claim, so the redirect still works after stored data is
# pruned (relay keeps links alive past SES's 60-day window); HMAC-SHA256 with a
# namespace per kind, several secrets for key rotation. No personal data inside.
from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes

from relay import legacy_tokens
from relay.legacy_tokens import LegacyClickClaim, LegacyOpenClaim

__all__ = ["MAX_LINK_PATH", "ClaimReader", "ClickClaim", "LegacyClickClaim", "LegacyOpenClaim", "Malformed",
           "OpenClaim", "Signer", "UnsubscribeClaim", "click_link_fits", "decode_url", "encode_url",
           "pack_relay_id", "unpack_relay_id", "varint"]


@dataclass(frozen=True)
class OpenClaim:
    message_id: str
    recipient_index: int  # index into the message's mail.destination (never the address)
    sent_at: float  # unix seconds when the message was accepted (kept to the millisecond)


@dataclass(frozen=True)
class ClickClaim:
    message_id: str
    recipient_index: int
    sent_at: float
    url: str  # the original destination URL (decoded href)
    link_tags: dict[str, list[str]]  # SES linkTags shape; {} when none


@dataclass(frozen=True)
class UnsubscribeClaim:
    message_id: str
    recipient_index: int  # as in OpenClaim: the address is never in the link
    sent_at: float
    contact_list: str  # SES ListManagementOptions (not personal data)
    topic: str | None


# Links (v2):  {base}/o/{token}    and    {base}/c/{token}/{encode_url(url)}
# token = base64url(no padding) of  body | MAC[:16], body a compact binary claim:
#   flags        1 byte: 0x80 (v2; v1 bodies start with 0x01/0x02) | the bits below
#   message id   24 bytes when relay-shaped (PACKED_ID: %016x ms, UUID, "-000000"),
#                else varint length + UTF-8
#   recipient    varint (LEB128) index into mail.destination, < 2**21
#   sent_at      6 bytes big-endian ms (EXPLICIT_SENT), only when it is not the id's ms
#   link tags    (TAGS) varint count, then name, varint count, values; strings are
#                varint length + UTF-8
# MAC = HMAC-SHA256(secret, namespace | body | UTF-8 URL) truncated: the URL sits in
# the path in clear (SES shows it too) but cannot be changed. The body parses to its
# exact end, so body|URL splits one way only.
_MAC_LEN = 16  # 128-bit truncated MAC: forging still needs 2**128 guesses
_V2, _PACKED_ID, _EXPLICIT_SENT, _TAGS = 0x80, 0x01, 0x02, 0x04
_OPEN_NS = b"relay.token.v2/open\x00"
_CLICK_NS = b"relay.token.v2/click\x00"
# The unsubscribe claim is the open claim's body with the list (and topic) in the tags
# field: {"l": [contact list]} or {"l": [contact list], "t": [topic]}.
_UNSUBSCRIBE_NS = b"relay.token.v2/unsubscribe\x00"
_MAX_INDEX = (1 << 21) - 1  # three varint bytes; SMTP messages have far fewer recipients
_MAX_SENT_MS = (1 << 48) - 1
# Verification bounds the work done on attacker input.
MAX_TOKEN_CHARS = 32768
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+")
_RELAY_ID_RE = re.compile(r"([0-9a-f]{16})-([0-9a-f]{8})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{12})-000000")


class Signer:
    """Signs claims with the first secret; verifies with any (key rotation)."""

    def __init__(self, secrets: Sequence[bytes]) -> None:
        keys = tuple(secrets)
        if not keys:
            raise ValueError("Signer needs at least one secret")
        for key in keys:
            if not isinstance(key, bytes) or not key:
                raise ValueError("Signer secrets must be non-empty bytes")
        self._keys = keys
        # Per kind, an HMAC per key with its namespace already absorbed: verifying copies
        # one (cheaper than keying a new HMAC for every hit).
        self._macs = {ns: tuple(hmac.new(key, ns, hashlib.sha256) for key in keys) for ns in (_OPEN_NS, _CLICK_NS, _UNSUBSCRIBE_NS)}

    def sign_open(self, claim: OpenClaim) -> str:
        """The token of an open link: {base}/o/{token}."""
        body = _claim_bytes(claim.message_id, claim.recipient_index, claim.sent_at, {})
        return _b64(body + _mac(self._keys[0], _OPEN_NS, body))

    def sign_click(self, claim: ClickClaim) -> str:
        """The rest of a click link after {base}/c/: "{token}/{percent-encoded URL}"."""
        body = _claim_bytes(claim.message_id, claim.recipient_index, claim.sent_at, claim.link_tags)
        url = claim.url.encode("utf-8", "surrogatepass")
        return f"{_b64(body + _mac(self._keys[0], _CLICK_NS, body + url))}/{encode_url(claim.url)}"

    def sign_unsubscribe(self, claim: UnsubscribeClaim) -> str:
        """The token of an unsubscribe link: {base}/u/{token}."""
        tags = {"l": [claim.contact_list], **({"t": [claim.topic]} if claim.topic is not None else {})}
        body = _claim_bytes(claim.message_id, claim.recipient_index, claim.sent_at, tags)
        return _b64(body + _mac(self._keys[0], _UNSUBSCRIBE_NS, body))

    def verify_unsubscribe(self, token: object) -> UnsubscribeClaim | None:
        blob = _unb64(token)
        if blob is None or blob[0] < _V2:
            return None
        fields = self._verify(_UNSUBSCRIBE_NS, blob, b"")
        if fields is None:
            return None
        tags = fields[3]
        lists, topics = tags.get("l", []), tags.get("t", [])
        if set(tags) - {"l", "t"} or len(lists) != 1 or len(topics) > 1:
            return None
        return UnsubscribeClaim(*fields[:3], lists[0], topics[0] if topics else None)

    def verify_open(self, token: object) -> OpenClaim | LegacyOpenClaim | None:
        """An /o/ token of either format (both have that URL shape)."""
        blob = _unb64(token)
        if blob is None:
            return None
        if blob[0] < _V2:
            return legacy_tokens.verify_open(self._keys, blob)
        fields = self._verify(_OPEN_NS, blob, b"")
        if fields is None or fields[3]:
            return None
        return OpenClaim(*fields[:3])

    def verify_click(self, rest: object) -> ClickClaim | None:
        """The raw path after /c/ of a v2 link ("{token}/{encoded URL}", no query)."""
        if not isinstance(rest, str) or len(rest) > 4 * MAX_LINK_PATH:
            return None
        token, slash, encoded = rest.partition("/")
        url = decode_url(encoded) if slash else None
        blob = _unb64(token)
        if url is None or blob is None or blob[0] < _V2:
            return None
        fields = self._verify(_CLICK_NS, blob, url.encode("utf-8", "surrogatepass"))
        if fields is None:
            return None
        return ClickClaim(*fields[:3], url, fields[3])

    def verify_legacy_click(self, token: object) -> LegacyClickClaim | None:
        """A v1 click token: the old link shape /c/{token}, already in mailboxes."""
        blob = _unb64(token)
        return None if blob is None else legacy_tokens.verify_click(self._keys, blob)

    def _verify(self, namespace: bytes, blob: bytes, url: bytes) -> tuple[str, int, float, dict[str, list[str]]] | None:
        if len(blob) < 1 + _MAC_LEN:
            return None
        body, mac = blob[:-_MAC_LEN], blob[-_MAC_LEN:]
        data = body + url
        for keyed in self._macs[namespace]:  # the same MAC as _mac(key, namespace, data)
            h = keyed.copy()
            h.update(data)
            # compare_digest: constant time, so the MAC cannot be guessed byte by byte.
            if hmac.compare_digest(h.digest()[:_MAC_LEN], mac):
                return _parse_claim(body)
        return None


def _mac(key: bytes, namespace: bytes, data: bytes) -> bytes:
    return hmac.new(key, namespace + data, hashlib.sha256).digest()[:_MAC_LEN]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(token: object) -> bytes | None:
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        return None
    if not _TOKEN_RE.fullmatch(token) or len(token) % 4 == 1:
        return None
    # Only the canonical encoding verifies: otherwise the unused low bits of the
    # last character would let a "flipped" token decode to the same bytes.
    spare = _SPARE_BITS[len(token) % 4]
    if spare and _B64_VALUE[token[-1]] & spare:
        return None
    try:
        blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    return blob or None


_B64_VALUE = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}
# The bits of the last character that carry no data, by length mod 4 (1 never decodes).
_SPARE_BITS = {0: 0, 2: 0x0F, 3: 0x03}


# --- the claim's bytes ------------------------------------------------------------


def _claim_bytes(message_id: str, index: int, sent_at: float, tags: dict[str, list[str]]) -> bytes:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= _MAX_INDEX:
        raise ValueError(f"recipient_index must be 0..{_MAX_INDEX}, not {index!r}")
    flags = _V2
    out = bytearray()
    packed = pack_relay_id(message_id)
    if packed is not None:
        flags |= _PACKED_ID
        out += packed
    else:
        out += _string(message_id)
    out += varint(index)
    # A relay id already holds the acceptance time in ms (intake takes both from one
    # clock reading); only a different sent_at is spelled out.
    if packed is None or not abs(sent_at * 1000 - int.from_bytes(packed[:8], "big")) < 1:
        sent_ms = round(sent_at * 1000) if math.isfinite(sent_at) else -1
        if not 0 <= sent_ms <= _MAX_SENT_MS:
            raise ValueError(f"sent_at out of range: {sent_at!r}")
        flags |= _EXPLICIT_SENT
        out += sent_ms.to_bytes(6, "big")
    if tags:  # omitted when empty: most links carry no tags
        flags |= _TAGS
        out += varint(len(tags))
        for name, values in tags.items():
            out += _string(name) + varint(len(values))
            for value in values:
                out += _string(value)
    return bytes([flags]) + bytes(out)


@functools.lru_cache(maxsize=256)  # per link of every copy, for the few messages in flight
def pack_relay_id(message_id: str) -> bytes | None:
    m = _RELAY_ID_RE.fullmatch(message_id)
    return bytes.fromhex("".join(m.groups())) if m else None


def unpack_relay_id(data: bytes) -> str:
    h = data.hex()
    return f"{h[:16]}-{h[16:24]}-{h[24:28]}-{h[28:32]}-{h[32:36]}-{h[36:48]}-000000"


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: str) -> bytes:
    # surrogatepass: ids or tags decoded with surrogateescape must not make signing fail.
    data = s.encode("utf-8", "surrogatepass")
    return varint(len(data)) + data


class Malformed(Exception):
    pass


class ClaimReader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.at:
            raise Malformed
        chunk = self.data[self.at : self.at + n]
        self.at += n
        return chunk

    def varint(self, max_bytes: int = 4) -> int:
        n = shift = 0
        for i in range(max_bytes):
            byte = self.take(1)[0]
            n |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                if byte == 0 and i:  # only the shortest encoding: one claim, one token
                    raise Malformed
                return n
        raise Malformed

    def string(self) -> str:
        try:
            return self.take(self.varint()).decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise Malformed from None


def _parse_claim(body: bytes) -> tuple[str, int, float, dict[str, list[str]]] | None:
    """(message_id, recipient_index, sent_at, link_tags) from a body whose MAC checked."""
    flags = body[0]
    if flags == _V2 | _PACKED_ID and len(body) == 26 and body[25] < 0x80:
        # The common case: a relay id, an index below 128 (one varint byte), no tags.
        return unpack_relay_id(body[1:25]), body[25], int.from_bytes(body[1:9], "big") / 1000, {}
    if flags & ~(_V2 | _PACKED_ID | _EXPLICIT_SENT | _TAGS):
        return None
    r = ClaimReader(body[1:])
    try:
        if flags & _PACKED_ID:
            packed = r.take(24)
            message_id = unpack_relay_id(packed)
            sent_ms = int.from_bytes(packed[:8], "big")
        else:
            message_id = r.string()
            if not flags & _EXPLICIT_SENT:
                return None
        index = r.varint(3)
        if flags & _EXPLICIT_SENT:
            sent_ms = int.from_bytes(r.take(6), "big")
        tags: dict[str, list[str]] = {}
        if flags & _TAGS:
            for _ in range(r.varint()):
                name = r.string()
                tags[name] = [r.string() for _ in range(r.varint())]
            if not tags:
                return None
    except Malformed:
        return None
    if r.at != len(r.data):
        return None
    return message_id, index, sent_ms / 1000, tags


# --- the URL in the path --------------------------------------------------------

# Left as is: RFC 3986 pchar (unreserved, sub-delims, ":" "@") but ";" (servlet
# containers strip ";params" from paths) and "'" (it ends quoted attributes and text
# links), and "/" except as below. Everything else, "%" "?" "#" space, controls and
# non-ASCII (as UTF-8), is percent-encoded: the URL cannot be read as our own query or
# fragment, and survives every hop byte for byte.
_SAFE = "!$&()*+,=:@/"  # with quote()'s own A-Z a-z 0-9 - . _ ~
_RISKY_SLASH = re.compile(r"(?:^|(?<=/))/|/(?=\.\.?(?:/|$))")
# Linkifiers in mail clients leave trailing punctuation out of a plain-text link
# ("see https://x.test/a." or "(https://x.test/a)"): the link must not end with any.
_TRAILING = frozenset("!$&()*+,=:@.-~_")


# Cached: a message's links are encoded again for every recipient's copy (~8 us each,
# half of signing a click link); at most 250 links per message, so 512 entries cover
# the messages in flight (a few MB at worst: links are at most MAX_LINK_PATH long).
@functools.lru_cache(maxsize=512)
def encode_url(url: str) -> str:
    """The destination URL as it goes into the click link's path.

    "/" stays readable (the link shows where it leads, as SES's do) except where a
    proxy or browser would rewrite the path: a slash right after another one (the
    separator before the URL included: "https://", nginx merge_slashes) and a slash
    before a "." or ".." segment (RFC 3986 section 5.2.4 dot-segment removal, done by
    browsers too) become %2F. A trailing punctuation character is encoded too.
    """
    encoded = _RISKY_SLASH.sub("%2F", quote(url, safe=_SAFE, encoding="utf-8", errors="surrogatepass"))
    if encoded and encoded[-1] in _TRAILING:
        encoded = f"{encoded[:-1]}%{ord(encoded[-1]):02X}"
    return encoded


def decode_url(encoded: str) -> str | None:
    """The URL from the raw path (any valid percent-encoding: the MAC covers the result)."""
    try:
        return unquote_to_bytes(encoded).decode("utf-8", "surrogatepass")
    except UnicodeError:
        return None


# --- the length contract with the instrumentation ---------------------------------

# A tracked link's path (from /c/ on) must stay short enough for every HTTP hop on its
# way back to relay: nginx's default large_client_header_buffers is 8 KB for the whole
# request line, aiohttp's max_line_size 8190; 8000 leaves room for the method, the
# HTTP version and a short path prefix in base_url.
MAX_LINK_PATH = 8000
_RELAY_ID_BYTES = 24
_WORST_INDEX_BYTES = 3  # _MAX_INDEX as a varint
_WORST_SENT_BYTES = 6  # an explicit sent_at


def click_link_fits(url: str, link_tags: dict[str, list[str]]) -> bool:
    """Whether every click link for this URL (and tags) stays within MAX_LINK_PATH.

    Decided once per message (it does not depend on the recipient); a link that does
    not fit is left untracked rather than broken. Exact for relay's own message ids:
    the longest link any recipient can get ("/c/" token "/" URL), with the largest
    recipient index and an explicit sent_at.
    """
    tag_bytes = len(varint(len(link_tags))) if link_tags else 0
    for name, values in link_tags.items():
        tag_bytes += len(_string(name)) + len(varint(len(values))) + sum(len(_string(v)) for v in values)
    body = 1 + _RELAY_ID_BYTES + _WORST_INDEX_BYTES + _WORST_SENT_BYTES + tag_bytes + _MAC_LEN
    return 3 + (4 * body + 2) // 3 + 1 + len(encode_url(url)) <= MAX_LINK_PATH
