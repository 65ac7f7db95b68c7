# DKIM signing after rewriting (relay/dkim.py), checked the way a receiver checks it:
# dkimpy's verify() against the public key, served by a DNS stub. Messages are tracked
# by relay's own prepare()/personalize(); the keys are made with relay dkim keygen's code.
from __future__ import annotations

import email.policy
import logging
import re
import subprocess
import sys
import time
import tomllib
from datetime import datetime, timezone
from email.message import EmailMessage
from pathlib import Path
from typing import AsyncIterator, Callable

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from relay import config as cfg
from relay.delivery import Deliverer, Schedule
from relay.dkim import (
    DkimSigner,
    DomainKey,
    SigningError,
    SigningKey,
    from_domain,
    generate_key,
    load_key,
    read_key,
    txt_record,
    txt_value,
)
from relay.downgrade import needs_8bitmime, to_7bit
from relay.errors import ConfigError
from relay.events import records
from relay.events.bus import EventBus
from relay.events.sqlite import SqliteDestination
from relay.instrument import TrackingOptions, personalize, prepare
from relay.intake import new_message_id
from relay.spool import Job, Spool
from relay.store import Store
from relay.tokens import Signer
from relay.upstream import SmtpUpstream
from tests.support import Upstream, wait_for

ROOT = Path(__file__).resolve().parent.parent
TOKENS = Signer([b"test-secret-0123456789"])


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    """One key of each kind for relay, and the mailer's own (it signed before relay)."""
    return {"rsa": generate_key("rsa")[1], "ed25519": generate_key("ed25519")[1],
            "mailer": generate_key("rsa")[1]}


def dns_for(records_: dict[str, SigningKey]) -> Callable[..., bytes | None]:
    """dkimpy's dnsfunc: selector._domainkey.domain. -> the TXT value relay says to publish."""
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        key = records_.get(name.decode())
        return txt_value(key).encode() if key is not None else None
    return lookup


def verdicts(data: bytes, dns: Callable[..., bytes | None]) -> list[tuple[str, bool]]:
    """(d=, verifies) for every DKIM-Signature of a message, top first."""
    d = dkim.DKIM(data)
    out = []
    for i, value in enumerate(v for n, v in d.headers if n.lower() == b"dkim-signature"):
        domain = re.search(rb"\bd=([^;\s]+)", value)
        assert domain is not None
        try:
            ok = bool(dkim.DKIM(data).verify(idx=i, dnsfunc=dns))
        except dkim.DKIMException:  # e.g. "body hash mismatch": a fail, as dkim.verify() says
            ok = False
        out.append((domain[1].decode(), ok))
    return out


def html_message(cte: str, *, sender: str = "News <news@example.com>") -> bytes:
    m = EmailMessage(policy=email.policy.SMTP)
    m["From"] = sender
    m["To"] = "reader@example.org"
    m["Subject"] = "Spring sale"
    m["Date"] = "Sun, 29 Nov 2026 20:00:00 +0000"
    m["Message-ID"] = "<spring-1@example.com>"
    m.set_content("Plain: https://example.com/spring — für alle\n", charset="utf-8", cte=cte)
    m.add_alternative('<html><body><p>Grüße</p><a href="https://example.com/spring?a=1&amp;b=2">Sale</a>'
                      "</body></html>\n", subtype="html", charset="utf-8", cte=cte)
    return m.as_bytes()


def mailer_signed(message: bytes, key: SigningKey, *, headers: list[bytes] | None = None,
                  domain: bytes = b"example.com", selector: bytes = b"mailer") -> bytes:
    """What an ESP or the mailer's own MTA would submit: relaxed/simple, its usual headers."""
    include = headers or [b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type"]
    signer = dkim.DKIM(message)
    signer.should_not_sign.discard(b"dkim-signature")  # some signers cover earlier signatures
    return signer.sign(selector, domain, key.private, canonicalize=(b"relaxed", b"simple"),
                       include_headers=include) + message


def tracked_copy(raw: bytes, index: int = 0) -> bytes:
    """One recipient's copy as delivery makes it: pixel and click links."""
    prepared = prepare(raw, TrackingOptions(open=True, click=True))
    assert prepared.failure is None
    return personalize(prepared, signer=TOKENS, base_url="https://t.example.com", https_policy="OPTIONAL",
                       message_id="0000019a1b2c3d4e-test-000000", recipient_index=index, sent_at=time.time())


def signer_for(key: SigningKey, *, domain: str = "example.com", selector: str = "s1",
               sign_all: bool = False) -> DkimSigner:
    return DkimSigner({domain: DomainKey(domain=domain, selector=selector, key=key, sign_all=sign_all)},
                      removed_headers=frozenset({"x-ses-configuration-set"}))


# --- signing what relay rewrote ---------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
@pytest.mark.parametrize("cte", ["quoted-printable", "base64", "8bit"])
def test_a_tracked_copy_is_signed_and_verifies(keys: dict[str, SigningKey], kind: str, cte: str) -> None:
    raw = html_message(cte)
    copy = tracked_copy(raw)
    assert b"https://t.example.com/c/" in copy or cte == "base64"  # base64: the links are encoded

    sealed = signer_for(keys[kind]).seal(copy, original=raw, changed=True)

    assert sealed.signed_as == "example.com" and sealed.removed == ()
    assert sealed.data.startswith(b"DKIM-Signature: v=1; a=" + (b"rsa-sha256" if kind == "rsa" else b"ed25519-sha256"))
    assert b"c=relaxed/relaxed" in sealed.data.split(b"\r\n\r\n", 1)[0]
    assert verdicts(sealed.data, dns_for({"s1._domainkey.example.com.": keys[kind]})) == [("example.com", True)]
    # The message is what personalize() made, with one field on top and nothing else changed
    # (8-bit parts aside: those are made 7-bit before signing, see the next test).
    if cte != "8bit":
        assert sealed.data.endswith(copy) and sealed.data.count(b"DKIM-Signature:") == 1


def test_the_usual_headers_are_signed_and_from_is_oversigned(keys: dict[str, SigningKey]) -> None:
    raw = html_message("quoted-printable")
    raw = raw.replace(b"Subject:", b"List-Unsubscribe: <https://t.example.com/u/x>\r\n"
                                   b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
                                   b"Feedback-ID: news:relay\r\nX-Mailer: app\r\nSubject:", 1)
    sealed = signer_for(keys["rsa"]).seal(tracked_copy(raw), original=raw, changed=True)
    field = dkim.DKIM(sealed.data).headers[0][1]
    names = [n.strip() for n in re.search(rb"h=([^;]+);", re.sub(rb"\r\n\s", b"", field))[1].split(b":")]  # type: ignore[index]
    assert names == [b"from", b"to", b"list-unsubscribe", b"list-unsubscribe-post", b"feedback-id", b"subject",
                     b"date", b"message-id", b"mime-version", b"content-type", b"from"]
    # A From: added on the way would break it (that is what oversigning is for).
    dns = dns_for({"s1._domainkey.example.com.": keys["rsa"]})
    assert dkim.verify(sealed.data, dnsfunc=dns)
    forged = sealed.data.replace(b"\r\nFrom:", b"\r\nFrom: evil@attacker.example\r\nFrom:", 1)
    assert not dkim.verify(forged, dnsfunc=dns)


def test_8bit_bodies_are_signed_in_their_7bit_form(keys: dict[str, SigningKey]) -> None:
    raw = html_message("8bit")
    assert needs_8bitmime(raw)
    sealed = signer_for(keys["rsa"]).seal(tracked_copy(raw), original=raw, changed=True)
    # RFC 6376 §5.3: nothing is left for an upstream without 8BITMIME to convert, so the
    # upstream's downgrade (relay/upstream.py) sends exactly these bytes.
    assert not needs_8bitmime(sealed.data)
    assert to_7bit(sealed.data) is sealed.data
    assert verdicts(sealed.data, dns_for({"s1._domainkey.example.com.": keys["rsa"]})) == [("example.com", True)]
    text = email.message_from_bytes(sealed.data, policy=email.policy.default)
    assert "Grüße" in text.get_body(("html",)).get_content()  # type: ignore[union-attr]


def test_an_8bit_body_that_cannot_be_made_7bit_is_signed_as_it_is(keys: dict[str, SigningKey]) -> None:
    raw = (b"From: news@example.com\r\nTo: r@example.org\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n\xff\x00\xfe\r\n")
    sealed = signer_for(keys["rsa"]).seal(raw + b"\r\n", original=raw, changed=True)
    assert sealed.data.endswith(raw + b"\r\n")  # an 8BITMIME upstream takes it as signed
    assert dkim.verify(sealed.data, dnsfunc=dns_for({"s1._domainkey.example.com.": keys["rsa"]}))


def test_bare_lf_messages_keep_their_line_endings(keys: dict[str, SigningKey]) -> None:
    raw = html_message("quoted-printable").replace(b"\r\n", b"\n")
    copy = tracked_copy(raw)
    sealed = signer_for(keys["ed25519"]).seal(copy, original=raw, changed=True)
    assert b"\r" not in sealed.data and sealed.data.endswith(copy)
    assert dkim.verify(sealed.data, dnsfunc=dns_for({"s1._domainkey.example.com.": keys["ed25519"]}))


# --- signatures the rewrite broke -------------------------------------------------


def test_a_presigned_message_relay_rewrites_loses_the_broken_signature(keys: dict[str, SigningKey]) -> None:
    raw = mailer_signed(html_message("quoted-printable"), keys["mailer"])
    dns = dns_for({"mailer._domainkey.example.com.": keys["mailer"], "s1._domainkey.example.com.": keys["rsa"]})
    assert verdicts(raw, dns) == [("example.com", True)]
    copy = tracked_copy(raw)
    assert verdicts(copy, dns) == [("example.com", False)]  # what receivers see today

    sealed = signer_for(keys["rsa"]).seal(copy, original=raw, changed=True)

    assert sealed.removed == ("example.com",) and sealed.signed_as == "example.com"
    assert verdicts(sealed.data, dns) == [("example.com", True)]  # relay's, and only relay's
    assert b"s=mailer" not in sealed.data


def test_without_a_key_the_broken_signature_is_removed_and_nothing_else(keys: dict[str, SigningKey]) -> None:
    raw = mailer_signed(html_message("base64"), keys["mailer"])
    copy = tracked_copy(raw)
    sealed = signer_for(keys["rsa"], domain="example.net").seal(copy, original=raw, changed=True)
    assert sealed.signed_as is None and sealed.removed == ("example.com",) and sealed.unsigned_removal
    assert b"DKIM-Signature" not in sealed.data
    assert copy.split(b"\r\n", 1)[0].startswith(b"DKIM-Signature")
    # Exactly the signature's lines are gone; every other byte is the copy's.
    assert copy.endswith(sealed.data) and len(copy) - len(sealed.data) == len(copy.split(b"\r\nFrom:")[0]) + 2


def test_an_untouched_presigned_message_keeps_its_bytes(keys: dict[str, SigningKey]) -> None:
    raw = mailer_signed(html_message("quoted-printable"), keys["mailer"])
    sealed = signer_for(keys["rsa"]).seal(raw, original=raw, changed=False)
    assert sealed.data is raw and sealed.signed_as is None and sealed.removed == ()
    assert verdicts(sealed.data, dns_for({"mailer._domainkey.example.com.": keys["mailer"]})) == [("example.com", True)]


def test_sign_all_signs_untouched_mail_and_keeps_the_signatures_that_hold(keys: dict[str, SigningKey]) -> None:
    raw = mailer_signed(html_message("quoted-printable"), keys["mailer"])
    sealed = signer_for(keys["rsa"], sign_all=True).seal(raw, original=raw, changed=False)
    assert sealed.signed_as == "example.com" and sealed.removed == () and sealed.data.endswith(raw)
    dns = dns_for({"mailer._domainkey.example.com.": keys["mailer"], "s1._domainkey.example.com.": keys["rsa"]})
    assert verdicts(sealed.data, dns) == [("example.com", True), ("example.com", True)]


def test_a_header_relay_adds_that_the_mailer_signed_breaks_its_signature(keys: dict[str, SigningKey]) -> None:
    # The mailer oversigned List-Unsubscribe (signed it absent), so adding one breaks the
    # signature even though the body is untouched; another signer covered only From.
    base = html_message("quoted-printable")
    raw = mailer_signed(base, keys["mailer"], headers=[b"from", b"subject", b"list-unsubscribe"])
    raw = mailer_signed(raw, keys["mailer"], headers=[b"from"], domain=b"esp.example", selector=b"esp")
    added = raw.replace(b"Subject:", b"List-Unsubscribe: <https://t.example.com/u/x>\r\nSubject:", 1)
    dns = dns_for({"mailer._domainkey.example.com.": keys["mailer"], "esp._domainkey.esp.example.": keys["mailer"],
                   "s1._domainkey.example.com.": keys["rsa"]})
    assert verdicts(added, dns) == [("esp.example", True), ("example.com", False)]

    sealed = signer_for(keys["rsa"]).seal(added, original=raw, changed=False)  # no body change

    assert sealed.removed == ("example.com",) and sealed.signed_as == "example.com"
    assert verdicts(sealed.data, dns) == [("example.com", True), ("esp.example", True)]


def test_headers_relay_adds_to_an_untracked_copy_get_signed(keys: dict[str, SigningKey]) -> None:
    # RFC 8058 §4: List-Unsubscribe(-Post) must be covered by a valid DKIM signature; the
    # mailer's still holds (it did not sign them) and stays.
    raw = mailer_signed(html_message("quoted-printable"), keys["mailer"])
    added = raw.replace(b"Subject:", b"List-Unsubscribe: <https://t.example.com/u/x>\r\n"
                                     b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nSubject:", 1)
    sealed = signer_for(keys["rsa"]).seal(added, original=raw, changed=False)
    assert sealed.signed_as == "example.com" and sealed.removed == () and sealed.data.endswith(added)
    assert b"list-unsubscribe : list-unsubscribe-post" in re.sub(rb"\r\n\s", b"", sealed.data.split(b"\r\nFrom:")[0])
    dns = dns_for({"mailer._domainkey.example.com.": keys["mailer"], "s1._domainkey.example.com.": keys["rsa"]})
    assert verdicts(sealed.data, dns) == [("example.com", True), ("example.com", True)]
    # Without a key: nothing to remove, nothing to sign, the copy as it came.
    alone = signer_for(keys["rsa"], domain="example.net").seal(added, original=raw, changed=False)
    assert alone.data is added and alone.removed == () and alone.signed_as is None


def test_a_signature_over_a_removed_signature_goes_too(keys: dict[str, SigningKey]) -> None:
    base = html_message("quoted-printable")
    raw = mailer_signed(base, keys["mailer"], headers=[b"from", b"list-unsubscribe"])
    raw = mailer_signed(raw, keys["mailer"], headers=[b"from", b"dkim-signature"], domain=b"esp.example",
                        selector=b"esp")
    added = raw.replace(b"Subject:", b"List-Unsubscribe: <https://t.example.com/u/x>\r\nSubject:", 1)
    sealed = signer_for(keys["rsa"], domain="example.net").seal(added, original=raw, changed=False)
    assert sorted(sealed.removed) == ["esp.example", "example.com"]  # the second signed the first
    assert b"DKIM-Signature" not in sealed.data


def test_a_signature_over_an_ses_header_intake_removed_is_broken(keys: dict[str, SigningKey]) -> None:
    raw = mailer_signed(html_message("quoted-printable"), keys["mailer"],
                        headers=[b"from", b"subject", b"x-ses-configuration-set"])
    sealed = signer_for(keys["rsa"]).seal(tracked_copy(raw), original=raw, changed=True)
    assert sealed.removed == ("example.com",)


def test_a_body_length_signature_that_still_holds_is_kept(keys: dict[str, SigningKey]) -> None:
    # l= (RFC 6376 §3.5) covers the first bytes only: what comes after may change.
    base = b"From: news@example.com\r\nTo: r@example.org\r\nSubject: x\r\n\r\nHello\r\n"
    raw = dkim.sign(base, b"mailer", b"example.com", keys["mailer"].private, length=True,
                    canonicalize=(b"relaxed", b"simple")) + base
    changed = raw + b"Appended by relay\r\n"
    sealed = signer_for(keys["rsa"]).seal(changed, original=raw, changed=True)
    assert sealed.removed == () and sealed.signed_as == "example.com"
    dns = dns_for({"mailer._domainkey.example.com.": keys["mailer"], "s1._domainkey.example.com.": keys["rsa"]})
    assert verdicts(sealed.data, dns) == [("example.com", True), ("example.com", True)]


def test_a_malformed_signature_is_left_alone(keys: dict[str, SigningKey]) -> None:
    raw = b"DKIM-Signature: this is not a tag list\r\n" + html_message("quoted-printable")
    sealed = signer_for(keys["rsa"]).seal(tracked_copy(raw), original=raw, changed=True)
    assert sealed.removed == () and b"this is not a tag list" in sealed.data
    assert dkim.verify(sealed.data, dnsfunc=dns_for({"s1._domainkey.example.com.": keys["rsa"]}))


def test_a_message_dkimpy_cannot_read_raises_signing_error(keys: dict[str, SigningKey]) -> None:
    raw = b" continuation first\r\nFrom: news@example.com\r\n\r\nbody\r\n"
    with pytest.raises(SigningError):
        signer_for(keys["rsa"]).seal(raw + b"x", original=raw, changed=True)
    raw = b"From: news@example.com\r\nnot a field\r\n\r\nbody\r\n"
    with pytest.raises(SigningError, match="Unexpected characters"):
        signer_for(keys["rsa"]).seal(raw + b"x", original=raw, changed=True)


# --- which key -------------------------------------------------------------------


@pytest.mark.parametrize(("sender", "expected"), [
    ("News <news@example.com>", "example.com"),
    ("news@NEWS.Example.COM", "news.example.com"),
    ('"Doe, Jane" <jane@example.org>, other@example.com', "example.org"),
    ("undisclosed-recipients:;", None),
    ("news@bücher.example", "xn--bcher-kva.example"),
])
def test_from_domain(sender: str, expected: str | None) -> None:
    raw = f"To: x@y.example\r\nFrom: {sender}\r\n\r\nbody\r\n".encode()
    assert from_domain(raw) == expected
    assert from_domain(b"To: x@y.example\r\n\r\nbody\r\n") is None


def test_the_closest_parent_domain_signs_a_subdomain(keys: dict[str, SigningKey]) -> None:
    signer = DkimSigner({
        "example.com": DomainKey(domain="example.com", selector="a", key=keys["rsa"]),
        "mail.example.com": DomainKey(domain="mail.example.com", selector="b", key=keys["rsa"]),
    })
    assert signer.key_for("example.com").selector == "a"  # type: ignore[union-attr]
    assert signer.key_for("news.example.com").selector == "a"  # type: ignore[union-attr]  # DMARC relaxed alignment
    assert signer.key_for("x.mail.example.com").selector == "b"  # type: ignore[union-attr]
    assert signer.key_for("badexample.com") is None  # labels, not string suffixes
    assert signer.key_for("example.org") is None and signer.key_for(None) is None


# --- keys ---------------------------------------------------------------------------


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def test_keys_relay_refuses_say_why() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValueError, match="RSA key of 1024 bits"):
        load_key(_pem(weak))
    with pytest.raises(ValueError, match="an ECDSA key; DKIM signs with RSA or Ed25519"):
        load_key(_pem(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(ValueError, match="encrypted"):
        load_key(_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048), b"secret"))
    public = weak.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ValueError, match="not a PEM private key"):
        load_key(public)
    with pytest.raises(ValueError, match="cannot read it"):
        read_key("/nonexistent/key.pem")


def test_pkcs1_keys_load_too() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    assert pem.startswith(b"-----BEGIN RSA PRIVATE KEY") and load_key(pem).bits == 2048


def test_txt_records_are_cut_in_255_byte_strings() -> None:
    _, key = generate_key("rsa", 4096)
    line = txt_record("example.com", "s1", key)
    strings = re.findall(r'"([^"]*)"', line)
    assert line.startswith("s1._domainkey.example.com. IN TXT \"v=DKIM1; k=rsa; p=")
    assert len(strings) == 3 and all(len(s) <= 255 for s in strings)
    assert "".join(strings) == txt_value(key)


def _dkim_config(tmp_path: Path, pem: bytes, *, sign: str = "changed") -> cfg.Config:
    path = tmp_path / "key.pem"
    path.write_bytes(pem)
    return cfg.parse({"dkim": {"example.com": {"selector": "s1", "private_key": str(path), "sign": sign}}},
                     source="relay.toml")


def test_config_reads_and_checks_the_key(tmp_path: Path) -> None:
    pem, key = generate_key("ed25519")
    d = _dkim_config(tmp_path, pem, sign="all").dkim["example.com"]
    assert d.key == key and d.sign == "all" and "private" not in repr(d)


@pytest.mark.parametrize(("pem", "reason"), [
    (b"garbage", "not a PEM private key"),
    (_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)), "an RSA key of 1024 bits"),
    (_pem(ec.generate_private_key(ec.SECP256R1())), "an ECDSA key"),
])
def test_a_bad_key_is_one_line_naming_it(tmp_path: Path, pem: bytes, reason: str) -> None:
    with pytest.raises(ConfigError) as e:
        _dkim_config(tmp_path, pem)
    message = str(e.value)
    assert message.startswith("relay.toml: dkim.example.com.private_key: expected an unencrypted RSA (2048 bits "
                              "or more) or Ed25519 private key in PEM, got ")
    assert reason in message and "\n" not in message


def test_check_config_finds_a_bad_key(tmp_path: Path) -> None:
    key = tmp_path / "weak.pem"
    key.write_bytes(_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)))
    conf = tmp_path / "relay.toml"
    conf.write_text(f'[dkim."example.com"]\nselector = "s1"\nprivate_key = "{key}"\n')
    r = subprocess.run([sys.executable, "-m", "relay.cli", "check-config", "--config", str(conf)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [
        f"relay: configuration error: {conf}: dkim.example.com.private_key: expected an unencrypted RSA (2048 "
        f"bits or more) or Ed25519 private key in PEM, got '{key}': an RSA key of 1024 bits; DKIM keys need "
        "2048 or more"]


# --- relay dkim keygen ------------------------------------------------------------------


def keygen(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay.cli", "dkim", "keygen", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_keygen_output_signs_and_verifies(tmp_path: Path, kind: str) -> None:
    r = keygen(tmp_path, "Example.com", "s2026", "--type", kind)
    assert r.returncode == 0, r.stderr
    path = tmp_path / "dkim-example.com-s2026.pem"
    assert (path.stat().st_mode & 0o777) == 0o600
    record = next(line for line in r.stdout.splitlines() if line.startswith("s2026._domainkey.example.com. IN TXT "))
    published = "".join(re.findall(r'"([^"]*)"', record))
    assert published.startswith(f"v=DKIM1; k={kind}; p=")
    # The printed snippet is a working configuration.
    snippet = r.stdout[r.stdout.index('[dkim."example.com"]'):]
    config = cfg.parse(tomllib.loads(snippet))
    d = config.dkim["example.com"]
    assert (d.selector, d.private_key) == ("s2026", str(path)) and d.key is not None
    raw = html_message("quoted-printable")
    sealed = DkimSigner({"example.com": DomainKey(domain="example.com", selector="s2026", key=d.key)}).seal(
        tracked_copy(raw), original=raw, changed=True)

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        return published.encode() if name == b"s2026._domainkey.example.com." else None
    assert dkim.verify(sealed.data, dnsfunc=dns)


def test_keygen_bits_and_refusals(tmp_path: Path) -> None:
    r = keygen(tmp_path, "example.com", "s1", "--bits", "3072", "--out", "k.pem")
    assert r.returncode == 0 and read_key(tmp_path / "k.pem").bits == 3072
    before = (tmp_path / "k.pem").read_bytes()
    r = keygen(tmp_path, "example.com", "s1", "--out", "k.pem")
    assert r.returncode == 1 and "exists; not overwritten" in r.stderr
    assert (tmp_path / "k.pem").read_bytes() == before
    r = keygen(tmp_path, "example.com", "s1", "--bits", "1024", "--out", "weak.pem")
    assert r.returncode == 2 and "1024 is not in the range" in r.stderr and not (tmp_path / "weak.pem").exists()
    r = keygen(tmp_path, "not a domain", "s1")
    assert r.returncode == 2 and r.stderr.startswith("relay: DOMAIN: expected a domain name")
    r = keygen(tmp_path, "example.com", "bad_selector")
    assert r.returncode == 2 and r.stderr.startswith("relay: SELECTOR: expected a DNS label")


# --- delivery: the warning for a domain without a key ----------------------------------


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = await Upstream().start()
    try:
        yield up
    finally:
        await up.stop()


async def test_no_key_warns_once_per_domain(tmp_path: Path, keys: dict[str, SigningKey], upstream: Upstream,
                                            store: Store, caplog: pytest.LogCaptureFixture) -> None:
    pem, _ = generate_key("ed25519")
    (tmp_path / "key.pem").write_bytes(pem)
    config = cfg.parse({
        "storage": {"path": str(tmp_path / "relay.db")},
        "upstream": {"url": f"smtp://127.0.0.1:{upstream.port}", "connections": 2, "timeout": 5},
        "configuration_sets": {"news": {"event_destinations": [
            {"name": "db", "type": "sqlite", "matching_event_types": ["send", "delivery", "open", "click"]}]}},
        "dkim": {"example.com": {"selector": "s1", "private_key": str(tmp_path / "key.pem")}},
    })
    spool = Spool(store)
    bus = EventBus(config.configuration_sets, {("news", "db"): SqliteDestination("news/db")}, store)
    schedule = Schedule()
    smtp = SmtpUpstream(config.upstream, local_hostname="relay.test")
    deliverer = Deliverer(config=config, spool=spool, upstream=smtp, bus=bus, signer=TOKENS, schedule=schedule)
    deliverer.start(2)
    try:
        for sender, domain in [("a@example.org", b"example.org"), ("b@example.org", b"example.org"),
                               ("c@example.net", b"example.net"), ("d@example.com", b"example.com")]:
            raw = mailer_signed(html_message("quoted-printable", sender=sender), keys["mailer"], domain=domain)
            now = time.time()
            mid = new_message_id(now)
            rcpts = ["r1@example.org", "r2@example.org"]
            mail = records.mail_info(message_id=mid, timestamp=datetime.fromtimestamp(now, timezone.utc),
                                     source=sender, destination=rcpts, header_block=raw.split(b"\r\n\r\n")[0],
                                     configuration_set="news", message_tags={}, source_ip="127.0.0.1",
                                     caller_identity=None)
            job = Job(message_id=mid, accepted_at=now, configuration_set="news", mail_from=sender, mail=mail,
                      tracked=True, attempts=dict.fromkeys(rcpts, 0), due=now, data=raw)
            await spool.put(job)
            schedule.add(job)
        await wait_for(lambda: len(upstream.messages) == 8)
    finally:
        await deliverer.stop()
        await smtp.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == "relay.delivery" and r.levelno == logging.WARNING]
    assert len(warnings) == 2  # example.org (twice, 4 copies) and example.net, each once
    assert any('from example.org that relay changes lose their signatures' in w for w in warnings)
    assert any('add a [dkim."example.net"] key' in w for w in warnings)
    dns = dns_for({"s1._domainkey.example.com.": read_key(tmp_path / "key.pem")})
    by_domain = {from_domain(m.data): m.data for m in upstream.messages}
    assert b"DKIM-Signature" not in by_domain["example.org"] and b"DKIM-Signature" not in by_domain["example.net"]
    assert verdicts(by_domain["example.com"], dns) == [("example.com", True)]


def test_the_module_is_pure() -> None:
    # relay/dkim.py does no I/O of its own but reading a key file: no asyncio, no sockets.
    source = (ROOT / "relay" / "dkim.py").read_text()
    assert not re.search(r"^(import|from) (asyncio|aiosmtplib|aiosmtpd|aiohttp|aiosqlite|socket|logging)\b",
                         source, re.M)
