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

PREFIX = "b-"
_NS = b"relay.return-path.v1\x00"
_MAC_LEN = 12  # 96 bits: forging one address takes ~2**96 guesses over SMTP
# A relay message id: %016x epoch ms (12 significant hex digits until year 10889), a UUID,
# "-000000" (relay.intake.new_message_id). Packed, it is 6 + 16 bytes.
_ID_RE = re.compile(r"0000([0-9a-f]{12})-([0-9a-f]{8})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{12})-000000")
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
    m = _ID_RE.fullmatch(claim.message_id)
    if m is None or not 0 <= claim.recipient_index < (1 << 21):
        return None
    index = bytearray()
    n = claim.recipient_index
    while True:  # LEB128, as the tracking tokens
        byte, n = n & 0x7F, n >> 7
        index.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes.fromhex("".join(m.groups())) + bytes(index)


def _unpack(body: bytes) -> ReturnPathClaim | None:
    packed, rest = body[:22], body[22:]
    index = shift = 0
    for i, byte in enumerate(rest):
        index |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if i != len(rest) - 1:
                return None
            break
    else:
        return None
    h = packed.hex()
    return ReturnPathClaim(f"0000{h[:12]}-{h[12:20]}-{h[20:24]}-{h[24:28]}-{h[28:32]}-{h[32:44]}-000000", index)
