# DKIM (RFC 6376) for the copies relay sends: signing keys read and checked at start-up,
# the signatures a rewrite broke found and removed, relay's own signature added last.
# Pure: bytes in, bytes out. dkimpy does every canonicalisation and signature, and
# `cryptography` reads and makes the keys; nothing here is hand-written crypto.
from __future__ import annotations

import base64
import binascii
import email.utils
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import dkim
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.crypto import HASH_ALGORITHMS
from dkim.util import InvalidTagValueList, parse_tag_value

from relay.downgrade import DowngradeError, needs_8bitmime, to_7bit
from relay.errors import RelayError
from relay.headers import header_fields, split_header_block
from relay.mime import eol_of

MIN_RSA_BITS = 2048  # RFC 8301 §3.2: signers MUST use at least 1024; 2048 is today's floor
KEY_TYPES = ("rsa", "ed25519")  # k= (RFC 6376 §3.6.1, RFC 8463)
# What relay's signature covers when present (RFC 6376 §5.4.1's list, plus the headers
# relay itself adds: RFC 8058 §4 asks that List-Unsubscribe(-Post) be signed).
SIGNED_HEADERS = (
    "from", "to", "cc", "subject", "date", "message-id", "reply-to", "mime-version",
    "content-type", "content-transfer-encoding", "in-reply-to", "references",
    "list-unsubscribe", "list-unsubscribe-post", "feedback-id",
)
OVERSIGNED = ("from",)  # listed once more than present, so none can be added (RFC 6376 §8.15)
TXT_STRING_MAX = 255  # one <character-string> of a TXT record (RFC 1035 §3.3)
_FIELD_RE = re.compile(rb"[\x21-\x7e]+?:")  # what dkimpy reads as a field line


class KeyProblem(ValueError):
    """A private key relay cannot sign with; str() says why, in a few words."""


class SigningError(RelayError):
    """A copy dkimpy cannot read (say, a header line that is not a field); str() says why."""


@dataclass(frozen=True, kw_only=True)
class SigningKey:
    """A private key in the form dkimpy signs with, and its public half for DNS."""

    key_type: str  # KEY_TYPES
    bits: int
    private: bytes = field(repr=False)  # RSA: PKCS#1 PEM; Ed25519: the base64 seed (RFC 8463 §3)
    public: str  # the p= value: SubjectPublicKeyInfo (RSA), the raw 32-byte key (Ed25519)

    @property
    def algorithm(self) -> bytes:
        return b"rsa-sha256" if self.key_type == "rsa" else b"ed25519-sha256"


def load_key(pem: bytes) -> SigningKey:
    """A PEM private key (PKCS#1 or PKCS#8); raises KeyProblem."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise KeyProblem("the key is encrypted; relay needs it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise KeyProblem(f"not a PEM private key ({str(e).splitlines()[0] if str(e) else 'unreadable'})") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyProblem(f"an RSA key of {key.key_size} bits; DKIM keys need {MIN_RSA_BITS} or more")
        spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
        return SigningKey(key_type="rsa", bits=key.key_size, private=private,
                          public=base64.b64encode(spki).decode("ascii"))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return SigningKey(key_type="ed25519", bits=256, private=base64.b64encode(seed),
                          public=base64.b64encode(raw).decode("ascii"))
    kind = ("an ECDSA key" if isinstance(key, ec.EllipticCurvePrivateKey) else "a DSA key"
            if isinstance(key, dsa.DSAPrivateKey) else "an Ed448 key" if isinstance(key, ed448.Ed448PrivateKey)
            else "a key of another type")
    raise KeyProblem(f"{kind}; DKIM signs with RSA or Ed25519 (RFC 8463)")


def read_key(path: str | Path) -> SigningKey:
    """The key in a PEM file; raises KeyProblem (unreadable file included)."""
    try:
        pem = Path(path).read_bytes()
    except OSError as e:
        raise KeyProblem(f"cannot read it: {e.strerror or e}") from None
    return load_key(pem)


def generate_key(key_type: str, bits: int = MIN_RSA_BITS) -> tuple[bytes, SigningKey]:
    """A new private key as PKCS#8 PEM, and the same key loaded."""
    private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if key_type == "rsa":
        if bits < MIN_RSA_BITS:
            raise KeyProblem(f"{bits} bits; DKIM keys need {MIN_RSA_BITS} or more")
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    elif key_type == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise KeyProblem(f"key type {key_type!r}; expected one of {', '.join(KEY_TYPES)}")
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return pem, load_key(pem)


def txt_value(key: SigningKey) -> str:
    """The DKIM key record (RFC 6376 §3.6.1)."""
    return f"v=DKIM1; k={key.key_type}; p={key.public}"


def txt_record(domain: str, selector: str, key: SigningKey) -> str:
    """The zone-file line to publish, its value cut into strings of 255 bytes at most."""
    value = txt_value(key)
    strings = " ".join(f'"{value[i:i + TXT_STRING_MAX]}"' for i in range(0, len(value), TXT_STRING_MAX))
    return f"{selector}._domainkey.{domain}. IN TXT {strings}"


@dataclass(frozen=True, kw_only=True)
class DomainKey:
    """What relay signs copies from one From: domain with ([dkim.<domain>])."""

    domain: str  # d= (lower case)
    selector: str  # s=
    key: SigningKey
    sign_all: bool = False  # sign = "all": every copy, not only the ones relay changed


@dataclass(frozen=True, kw_only=True)
class Sealed:
    """One copy after the DKIM step."""

    data: bytes
    from_domain: str | None  # the header From: domain, lower case
    signed_as: str | None = None  # d= of relay's signature; None: not signed
    removed: tuple[str, ...] = ()  # d= of each signature removed because it would fail

    @property
    def unsigned_removal(self) -> bool:
        """Signatures were removed and relay had no key to sign in their place."""
        return bool(self.removed) and self.signed_as is None


@dataclass(frozen=True)
class _Signature:
    index: int  # position among the message's header fields (dkimpy's list)
    domain: str
    tags: Mapping[bytes, bytes]


class DkimSigner:
    """Signs copies with the key of their From: domain and drops signatures they broke.

    `removed_headers`: header names intake took out before spooling (the SES control
    headers); a signature covering one of them cannot verify any more.
    """

    def __init__(self, keys: Mapping[str, DomainKey], *, removed_headers: frozenset[str] = frozenset()) -> None:
        self._keys = {d.lower(): k for d, k in keys.items()}
        self._removed_headers = frozenset(h.lower().encode("ascii") for h in removed_headers)

    def key_for(self, domain: str | None) -> DomainKey | None:
        """The key of the From: domain, else of its closest parent domain that has one:
        d=example.com aligns with From: news.example.com under DMARC's relaxed alignment
        (RFC 7489 §3.1.1), the default; strict alignment needs a table for the exact domain."""
        if not domain:
            return None
        labels = domain.split(".")
        for i in range(len(labels)):
            key = self._keys.get(".".join(labels[i:]))
            if key is not None:
                return key
        return None

    def seal(self, data: bytes, *, original: bytes, changed: bool) -> Sealed:
        """The copy `data` (made by relay from `original`, the message as spooled), signed
        when relay changed it (`changed`: the body was rewritten for tracking; or any byte
        differs, e.g. List-Unsubscribe or Feedback-ID added, which RFC 8058 §4 and Gmail's
        feedback loop want covered by the domain's signature) or its domain signs all mail,
        without the signatures that would fail. Untouched, it is returned as is (the same
        object). Raises SigningError."""
        if not self._keys and b"dkim-signature" not in data[:split_header_block(data)[1]].lower():
            return Sealed(data=data, from_domain=None)  # no key, nothing to drop: the common case, cheaply
        domain = from_domain(data)
        key = self.key_for(domain)
        if not changed and data is not original and data == original:
            data = original
        if data is original and not changed and not (key is not None and key.sign_all):
            return Sealed(data=data, from_domain=domain)  # byte for byte: nothing to do
        if key is not None and needs_8bitmime(data):
            # RFC 6376 §5.3: sign the 7-bit form, so an upstream without 8BITMIME (RFC 6152)
            # has nothing left to convert after the signature is made.
            try:
                data = to_7bit(data)
            except DowngradeError:
                pass  # sent 8-bit (the upstream needs 8BITMIME) or refused there, as unsigned mail is
        original_headers = _parse(original[:split_header_block(original)[1]])[0]
        headers, body = _parse(data)
        broken = self._broken(headers, body, original_headers)
        data = _drop_fields(data, [s.index for s in broken], headers)
        removed = tuple(s.domain for s in broken)
        if key is None:
            return Sealed(data=data, from_domain=domain, removed=removed)
        # Only DKIM-Signature fields were dropped: the fields to sign are those read above.
        return Sealed(data=_sign(data, key, headers), from_domain=domain, signed_as=key.domain, removed=removed)

    def _broken(self, headers: Sequence[tuple[bytes, bytes]], body: bytes,
                original_headers: Sequence[tuple[bytes, bytes]]) -> list[_Signature]:
        """The signatures that would fail on this copy: its body no longer hashes to bh=,
        or a header they sign is not what it was (relay added, changed or removed it)."""
        signatures = _signatures(headers)
        digests: dict[tuple[bytes, bytes, bytes | None], bytes] = {}
        broken = [s for s in signatures if not self._body_matches(s, body, digests)
                  or self._headers_removed(s)]
        # Removing a signature changes what a signature covering DKIM-Signature selects: once
        # more, until nothing else breaks (at most one pass per signature).
        while True:
            gone = {s.index for s in broken}
            kept = [h for i, h in enumerate(headers) if i not in gone]
            more = [s for s in signatures if s.index not in gone
                    and not _same_headers(s, kept, original_headers)]
            if not more:
                return broken
            broken += more

    def _headers_removed(self, sig: _Signature) -> bool:
        return any(name in self._removed_headers for name in _signed_names(sig))

    @staticmethod
    def _body_matches(sig: _Signature, body: bytes, digests: dict[tuple[bytes, bytes, bytes | None], bytes]) -> bool:
        """bh= against the body, canonicalised as the signature's c= and l= say (RFC 6376 §3.7)."""
        try:
            policy = CanonicalizationPolicy.from_c_value(sig.tags.get(b"c", b"simple/simple"))
            hasher = HASH_ALGORITHMS[sig.tags[b"a"]]
            expected = base64.b64decode(re.sub(rb"\s+", b"", sig.tags[b"bh"]), validate=True)
            length = int(sig.tags[b"l"]) if b"l" in sig.tags else None
        except (InvalidCanonicalizationPolicyError, KeyError, binascii.Error, ValueError):
            return True  # malformed: it never verified, and relay did not break it; left alone
        memo = (sig.tags.get(b"c", b""), sig.tags[b"a"], sig.tags.get(b"l"))
        if memo not in digests:
            canonical = policy.canonicalize_body(body)
            digests[memo] = hasher(canonical if length is None else canonical[:length]).digest()
        return digests[memo] == expected


def from_domain(data: bytes) -> str | None:
    """The domain of the header From: (RFC 5322 §3.6.2), lower case, A-labels; None without one."""
    block, _ = split_header_block(data)
    value = next((f.value for f in header_fields(block) if f.name.lower() == "from"), None)
    if value is None:
        return None
    for _, address in email.utils.getaddresses([value]):
        if "@" in address:
            domain = address.rsplit("@", 1)[1].strip().rstrip(".").lower()
            try:
                return domain.encode("idna").decode("ascii") if not domain.isascii() else domain
            except UnicodeError:
                return domain
    return None


def _parse(data: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """dkimpy's own reading of a message: the header fields and the CRLF body it hashes."""
    try:
        headers, body = dkim.rfc822_parse(data)
    except dkim.MessageFormatError as e:
        raise SigningError(str(e)) from None
    except IndexError:  # dkimpy's reading of a continuation line before any field
        raise SigningError("the header starts with a continuation line") from None
    return [(bytes(n), bytes(v)) for n, v in headers], body


def _signatures(headers: Sequence[tuple[bytes, bytes]]) -> list[_Signature]:
    out = []
    for i, (name, value) in enumerate(headers):
        if name.lower() != b"dkim-signature":
            continue
        try:
            tags = parse_tag_value(re.sub(rb"\r?\n", b"", value))
        except InvalidTagValueList:
            continue  # not a tag list: a failing signature relay did not make fail; left alone
        out.append(_Signature(index=i, domain=tags.get(b"d", b"").decode("ascii", "replace"), tags=tags))
    return out


def _signed_names(sig: _Signature) -> list[bytes]:
    return [n.lower() for n in re.split(rb"\s*:\s*", sig.tags.get(b"h", b"").strip()) if n]


def _same_headers(sig: _Signature, headers: Sequence[tuple[bytes, bytes]],
                  original: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether the fields h= selects (bottom up, RFC 6376 §5.4.2) read the same, canonicalised
    as c= says, in the copy and in the spooled message."""
    try:
        policy = CanonicalizationPolicy.from_c_value(sig.tags.get(b"c", b"simple/simple"))
    except InvalidCanonicalizationPolicyError:
        return True
    names = _signed_names(sig)
    return (dkim.select_headers(policy.canonicalize_headers(list(headers)), names)
            == dkim.select_headers(policy.canonicalize_headers(list(original)), names))


def _field_spans(data: bytes) -> list[tuple[int, int]]:
    """The byte span of each header field, numbered as dkimpy's rfc822_parse numbers them:
    lines end at LF, a line starting with SP or TAB continues the field, an mbox "From "
    line is no field."""
    spans: list[tuple[int, int]] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        end = len(data) if end < 0 else end + 1
        line = data[pos:end]
        if line in (b"\n", b"\r\n"):
            break
        if line[:1] in (b" ", b"\t") and spans:
            spans[-1] = (spans[-1][0], end)
        elif _FIELD_RE.match(line):
            spans.append((pos, end))
        pos = end
    return spans


def _drop_fields(data: bytes, indexes: Sequence[int], headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The message without the header fields at these positions of `headers` (dkimpy's
    reading of it); every other byte stays."""
    if not indexes:
        return data
    spans = _field_spans(data)
    if [data[s:e].split(b":", 1)[0] for s, e in spans] != [n for n, _ in headers]:
        raise SigningError("the header fields cannot be located")  # a reading dkimpy does not share
    out = bytearray()
    pos = 0
    for i in sorted(indexes):
        start, end = spans[i]
        out += data[pos:start]
        pos = end
    out += data[pos:]
    return bytes(out)


def _sign(data: bytes, key: DomainKey, headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """relaxed/relaxed (survives the re-folding and white-space changes of MTAs on the way),
    the SIGNED_HEADERS present (`headers`: the copy's fields, as _parse read them), From
    oversigned; the field goes on top (RFC 6376 §5.6)."""
    include = [n.lower() for n, _ in headers if n.lower().decode("ascii", "replace") in SIGNED_HEADERS]
    include += [n.lower() for n, _ in headers if n.lower().decode("ascii", "replace") in OVERSIGNED]
    eol = eol_of(data, 0, len(data)) or b"\r\n"  # the message's own line ending
    try:
        field_ = dkim.DKIM(data, signature_algorithm=key.key.algorithm, linesep=eol).sign(
            key.selector.encode("ascii"), key.domain.encode("ascii"), key.key.private,
            canonicalize=(b"relaxed", b"relaxed"), include_headers=include)
    except dkim.DKIMException as e:
        raise SigningError(str(e)) from None
    return bytes(field_) + data
