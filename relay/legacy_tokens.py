# Verification (never signing) of the first token format, "v1": links already mailed
# must keep redirecting. A v1 token is base64url of  format-byte | payload | MAC[:16],
# the payload JSON [message_id, recipient address, sent_at(, url, tags)], raw (format 1)
# or raw DEFLATE (format 2); it revealed the address and URL, hence tokens.py's v2.
from __future__ import annotations

import hashlib
import hmac
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeGuard

MAC_LEN = 16
RAW, DEFLATED = 1, 2  # v1 format bytes; v2 bodies start with a byte >= 0x80
OPEN_NS = b"relay.token.v1/open\x00"
CLICK_NS = b"relay.token.v1/click\x00"
_MAX_PAYLOAD = 65536  # inflating attacker input stops here


@dataclass(frozen=True)
class LegacyOpenClaim:
    message_id: str
    recipient: str  # v1 carried the address itself
    sent_at: float


@dataclass(frozen=True)
class LegacyClickClaim:
    message_id: str
    recipient: str
    sent_at: float
    url: str
    link_tags: dict[str, list[str]]


def verify_open(keys: Sequence[bytes], blob: bytes) -> LegacyOpenClaim | None:
    """`blob` is the base64-decoded token (canonical encoding already checked)."""
    fields = _verify(keys, OPEN_NS, blob)
    if fields is None or len(fields) != 3:
        return None
    message_id, recipient, sent_at = fields
    if not (isinstance(message_id, str) and isinstance(recipient, str) and _is_number(sent_at)):
        return None
    return LegacyOpenClaim(message_id, recipient, float(sent_at))


def verify_click(keys: Sequence[bytes], blob: bytes) -> LegacyClickClaim | None:
    fields = _verify(keys, CLICK_NS, blob)
    if fields is None or len(fields) not in (4, 5):
        return None
    message_id, recipient, sent_at, url = fields[:4]
    tags = fields[4] if len(fields) == 5 else {}
    if not (isinstance(message_id, str) and isinstance(recipient, str) and isinstance(url, str)):
        return None
    if not _is_number(sent_at) or not _is_tags(tags):
        return None
    return LegacyClickClaim(message_id, recipient, float(sent_at), url, tags)


def _verify(keys: Sequence[bytes], namespace: bytes, blob: bytes) -> list[object] | None:
    if len(blob) < 1 + MAC_LEN or blob[0] not in (RAW, DEFLATED):
        return None
    body, mac = blob[:-MAC_LEN], blob[-MAC_LEN:]
    # compare_digest: constant time, so the MAC cannot be guessed byte by byte.
    if not any(hmac.compare_digest(hmac.new(key, namespace + body, hashlib.sha256).digest()[:MAC_LEN], mac)
               for key in keys):
        return None
    data = body[1:]
    try:
        if body[0] == DEFLATED:
            inflater = zlib.decompressobj(-15)  # raw DEFLATE, any window size
            data = inflater.decompress(data, _MAX_PAYLOAD)
            if inflater.unconsumed_tail or not inflater.eof:
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
