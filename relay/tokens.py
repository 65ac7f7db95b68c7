# Signed, self-contained tracking tokens for the /o/ (open) and /c/ (click) URLs.
# A token carries its whole claim, so the redirect still works after stored data is
# pruned (relay keeps links alive past SES's 60-day window); HMAC-SHA256 with a
# namespace per kind, several secrets for key rotation.
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeGuard


@dataclass(frozen=True)
class OpenClaim:
    message_id: str
    recipient: str
    sent_at: float  # unix seconds when the message was accepted


@dataclass(frozen=True)
class ClickClaim:
    message_id: str
    recipient: str
    sent_at: float
    url: str  # the original destination URL (decoded href)
    link_tags: dict[str, list[str]]  # SES linkTags shape; {} when none


# Wire format: base64url(no padding) of  format-byte | payload | MAC[:16]
#   format 1: payload is compact JSON (UTF-8); format 2: the same JSON as raw DEFLATE
#   (RFC 1951, no zlib header), used only when shorter. A 1 KiB window and small memLevel
#   compress claims as well as the defaults at a sixth of the set-up cost.
# MAC = HMAC-SHA256(secret, namespace | format-byte | payload); the namespace differs
# per kind, so an open token never verifies as a click token and vice versa.
_MAC_LEN = 16  # 128-bit truncated MAC: forging still needs 2**128 guesses
_RAW, _DEFLATED = 1, 2
_OPEN_NS = b"relay.token.v1/open\x00"
_CLICK_NS = b"relay.token.v1/click\x00"
# Verification bounds the work done on attacker input: tokens longer than this, or
# payloads inflating beyond it, are rejected before/while decoding.
MAX_TOKEN_CHARS = 32768
_MAX_PAYLOAD = 65536
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+")


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

    def sign_open(self, claim: OpenClaim) -> str:
        return self._sign(_OPEN_NS, [claim.message_id, claim.recipient, claim.sent_at])

    def sign_click(self, claim: ClickClaim) -> str:
        fields: list[object] = [claim.message_id, claim.recipient, claim.sent_at, claim.url]
        if claim.link_tags:  # omitted when empty: most links carry no tags
            fields.append(claim.link_tags)
        return self._sign(_CLICK_NS, fields)

    def verify_open(self, token: str) -> OpenClaim | None:
        fields = self._verify(_OPEN_NS, token)
        if fields is None or len(fields) != 3:
            return None
        message_id, recipient, sent_at = fields
        if not (isinstance(message_id, str) and isinstance(recipient, str) and _is_number(sent_at)):
            return None
        return OpenClaim(message_id, recipient, float(sent_at))

    def verify_click(self, token: str) -> ClickClaim | None:
        fields = self._verify(_CLICK_NS, token)
        if fields is None or len(fields) not in (4, 5):
            return None
        message_id, recipient, sent_at, url = fields[:4]
        tags = fields[4] if len(fields) == 5 else {}
        if not (isinstance(message_id, str) and isinstance(recipient, str) and isinstance(url, str)):
            return None
        if not _is_number(sent_at) or not _is_tags(tags):
            return None
        return ClickClaim(message_id, recipient, float(sent_at), url, tags)

    def _sign(self, namespace: bytes, fields: list[object]) -> str:
        payload = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
        # surrogatepass: addresses decoded with surrogateescape must not make signing fail.
        data = payload.encode("utf-8", "surrogatepass")
        deflater = zlib.compressobj(9, zlib.DEFLATED, -10, 2)
        packed = deflater.compress(data) + deflater.flush()
        body = bytes([_DEFLATED]) + packed if len(packed) < len(data) else bytes([_RAW]) + data
        mac = _mac(self._keys[0], namespace, body)
        return base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode("ascii")

    def _verify(self, namespace: bytes, token: object) -> list[object] | None:
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            return None
        if not _TOKEN_RE.fullmatch(token) or len(token) % 4 == 1:
            return None
        try:
            blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            return None
        # Only the canonical encoding verifies: otherwise the unused low bits of the
        # last character would let a "flipped" token decode to the same bytes.
        if base64.urlsafe_b64encode(blob).rstrip(b"=").decode("ascii") != token:
            return None
        if len(blob) < 1 + _MAC_LEN:
            return None
        body, mac = blob[:-_MAC_LEN], blob[-_MAC_LEN:]
        # compare_digest: constant time, so the MAC cannot be guessed byte by byte.
        if not any(hmac.compare_digest(_mac(key, namespace, body), mac) for key in self._keys):
            return None
        return _decode_payload(body)


def _mac(key: bytes, namespace: bytes, body: bytes) -> bytes:
    return hmac.new(key, namespace + body, hashlib.sha256).digest()[:_MAC_LEN]


def _decode_payload(body: bytes) -> list[object] | None:
    kind, data = body[0], body[1:]
    try:
        if kind == _DEFLATED:
            inflater = zlib.decompressobj(-15)  # raw DEFLATE, any window size
            data = inflater.decompress(data, _MAX_PAYLOAD)
            if inflater.unconsumed_tail or not inflater.eof:
                return None
        elif kind != _RAW:
            return None
        fields = json.loads(data.decode("utf-8", "surrogatepass"))
    except (zlib.error, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return fields if isinstance(fields, list) else None


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_tags(value: object) -> TypeGuard[dict[str, list[str]]]:
    return isinstance(value, dict) and all(
        isinstance(name, str) and isinstance(values, list) and all(isinstance(item, str) for item in values)
        for name, values in value.items()
    )


# A tracked link must stay short enough for every HTTP hop on its way back to relay
# (nginx's and aiohttp's default request-line buffers are 8 KB).
MAX_LINK_PATH = 8000


def click_link_fits(url: str, link_tags: dict[str, list[str]]) -> bool:
    """Whether a click link for this URL (and tags) stays within MAX_LINK_PATH.

    Decided once per message (it does not depend on the recipient); a link that does
    not fit is left untracked rather than broken.
    """
    # Placeholder until the token format carries the URL beside the claim: a
    # conservative bound on today's format (base64 of the raw claim).
    tag_chars = sum(len(k) + sum(len(v) + 3 for v in vs) + 5 for k, vs in link_tags.items())
    return (len(url.encode("utf-8", "surrogatepass")) + tag_chars + 200) * 4 // 3 + 30 <= MAX_LINK_PATH
