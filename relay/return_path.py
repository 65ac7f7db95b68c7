# VERP (variable envelope return path): each copy relay sends upstream gets its own
# envelope sender, b-<token>@<return path domain>, so a bounce that comes back maps to
# exactly one message and recipient. The token is signed (HMAC-SHA256 with the tracking
# secrets, a namespace of its own) and carries no personal data: the message id and
# the recipient's index into mail.destination.
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

from relay.tokens import ClaimReader, Malformed, pack_relay_id, unpack_relay_id, varint

PREFIX = "b-"
_NS = b"relay.return-path.v1\x00"
_MAC_LEN = 12  # 96 bits: forging one address takes ~2**96 guesses over SMTP
# A relay message id packs to 24 bytes (relay.tokens.pack_relay_id), the first two the
# top of the epoch ms: zero until year 10889, so they are left out here.
_MS_TOP = b"\0\0"
# RFC 5321 §4.5.3.1.1: a local part is at most 64 octets. Lower-case base32: the local
# part survives MTAs that fold case (RFC 5321 §2.4 lets them).
MAX_LOCAL_PART = 64
_TOKEN_RE = re.compile(r"[a-z2-7]{1,62}")


@dataclass(frozen=True)
class ReturnPathClaim:
    message_id: str
    recipient_index: int  # into the message's mail.destination


class ReturnPaths:
    """Signs with the first secret, verifies with any (the tracking secrets' rotation)."""

    def __init__(self, secrets: Sequence[bytes]) -> None:
        if not secrets or not all(isinstance(s, bytes) and s for s in secrets):
            raise ValueError("ReturnPaths needs non-empty secrets")
        self._keys = tuple(secrets)

    def address(self, claim: ReturnPathClaim, domain: str) -> str | None:
        """b-<token>@domain, or None when the message id is not relay-shaped."""
        body = _pack(claim)
        if body is None:
            return None
        token = base64.b32encode(body + _mac(self._keys[0], body)).decode("ascii").rstrip("=").lower()
        return f"{PREFIX}{token}@{domain}"

    def verify(self, address: str, domains: Sequence[str]) -> ReturnPathClaim | None:
        """The claim of a return path address under one of the domains; None if forged,
        malformed or elsewhere. Case-insensitive, as local parts may be folded."""
        local, at, domain = address.strip().strip("<>").rpartition("@")
        if not at or domain.lower() not in domains:
            return None
        local = local.lower()
        if not local.startswith(PREFIX) or not _TOKEN_RE.fullmatch(local[len(PREFIX):]):
            return None
        encoded = local[len(PREFIX):].upper()
        try:
            blob = base64.b32decode(encoded + "=" * (-len(encoded) % 8))
        except (binascii.Error, ValueError):
            return None
        if len(blob) < 22 + 1 + _MAC_LEN:
            return None
        body, mac = blob[:-_MAC_LEN], blob[-_MAC_LEN:]
        if not any(hmac.compare_digest(_mac(key, body), mac) for key in self._keys):
            return None
        return _unpack(body)

    def is_return_path(self, address: str, domains: Sequence[str]) -> bool:
        """Under a return path domain at all (valid or not): such mail is ours to refuse."""
        return address.strip().strip("<>").rpartition("@")[2].lower() in domains


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, _NS + body, hashlib.sha256).digest()[:_MAC_LEN]


def _pack(claim: ReturnPathClaim) -> bytes | None:
    packed = pack_relay_id(claim.message_id)
    if packed is None or packed[:2] != _MS_TOP or not 0 <= claim.recipient_index < (1 << 21):
        return None
    return packed[2:] + varint(claim.recipient_index)  # LEB128, as the tracking tokens


def _unpack(body: bytes) -> ReturnPathClaim | None:
    reader = ClaimReader(body[22:])
    try:
        index = reader.varint(3)
    except Malformed:
        return None
    if reader.at != len(reader.data):
        return None
    return ReturnPathClaim(unpack_relay_id(_MS_TOP + body[:22]), index)
