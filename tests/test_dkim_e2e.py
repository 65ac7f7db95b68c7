# DKIM end to end: `relay serve` with a [dkim."example.com"] key and a tracking
# configuration set, a mailer that signed its mail before submitting, and aiosmtpd
# upstreams (one without 8BITMIME) whose received copies are checked with dkimpy.
from __future__ import annotations

import email
import email.policy
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path
from typing import AsyncIterator, Callable

import aiosmtplib
import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from relay.dkim import SigningKey, generate_key, txt_value
from relay.downgrade import needs_8bitmime
from tests.support import RelayProcess, Upstream, free_port, port_open, wait_for

SETS = """
[configuration_sets.news]
[[configuration_sets.news.event_destinations]]
name = "db"
type = "sqlite"
matching_event_types = ["send", "delivery", "bounce", "deliveryDelay", "open", "click"]
[configuration_sets.plain]
[[configuration_sets.plain.event_destinations]]
name = "db"
type = "sqlite"
matching_event_types = ["send", "delivery", "bounce", "deliveryDelay"]
"""
RECIPIENTS = ["ana@example.org", "bob@example.org"]


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[bytes, SigningKey]]:
    return {"relay": generate_key("rsa"), "mailer": generate_key("ed25519")}


def dns_for(keys: dict[str, tuple[bytes, SigningKey]]) -> Callable[..., bytes | None]:
    """The DNS the receivers would ask: relay's key at s1, the mailer's at mailer."""
    published = {b"s1._domainkey.example.com.": keys["relay"][1], b"mailer._domainkey.example.com.": keys["mailer"][1]}

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        key = published.get(name)
        return txt_value(key).encode() if key is not None else None
    return lookup


def signatures(data: bytes, dns: Callable[..., bytes | None]) -> list[tuple[bytes, bool]]:
    """(s=, verifies) for each DKIM-Signature of a received copy, top first."""
    values = [v for n, v in dkim.DKIM(data).headers if n.lower() == b"dkim-signature"]
    out = []
    for i, value in enumerate(values):
        selector = dkim.util.parse_tag_value(value.replace(b"\r\n", b""))[b"s"]
        try:
            ok = bool(dkim.DKIM(data).verify(idx=i, dnsfunc=dns))
        except dkim.DKIMException:
            ok = False
        out.append((selector, ok))
    return out


def presigned(keys: dict[str, tuple[bytes, SigningKey]], configuration_set: str, cte: str = "quoted-printable") -> bytes:
    """An HTML newsletter as the mailer submits it: signed by the mailer's own key."""
    m = EmailMessage(policy=email.policy.SMTP)
    m["From"] = "News <news@example.com>"
    m["To"] = ", ".join(RECIPIENTS)
    m["Subject"] = "Spring sale"
    m["Message-ID"] = "<spring@example.com>"
    m.set_content("See https://example.com/spring — Grüße\n", charset="utf-8", cte=cte)
    m.add_alternative('<html><body><p>Grüße</p><a href="https://example.com/spring">Sale</a></body></html>\n',
                      subtype="html", charset="utf-8", cte=cte)
    body = m.as_bytes()
    signature = dkim.sign(body, b"mailer", b"example.com", keys["mailer"][1].private,
                          signature_algorithm=b"ed25519-sha256", canonicalize=(b"relaxed", b"simple"),
                          include_headers=[b"from", b"to", b"subject", b"message-id", b"mime-version",
                                           b"content-type"])
    # The set header goes in after signing, as a mailer adds it at submission (relay removes it).
    return signature + f"X-SES-CONFIGURATION-SET: {configuration_set}\r\n".encode() + body


async def submit(port: int, data: bytes) -> str:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=20) as client:
        _, reply = await client.sendmail("news@example.com", RECIPIENTS, data)
        return reply


@pytest.fixture
async def relay_with_key(tmp_path: Path, keys: dict[str, tuple[bytes, SigningKey]]) -> AsyncIterator[
        Callable[[Upstream], RelayProcess]]:
    started: list[RelayProcess] = []
    (tmp_path / "dkim.pem").write_bytes(keys["relay"][0])

    def make(upstream: Upstream) -> RelayProcess:
        relay = RelayProcess(tmp_path, SETS + f'[dkim."example.com"]\nselector = "s1"\n'
                                              f'private_key = "{tmp_path / "dkim.pem"}"\n',
                             upstream_url=f"smtp://127.0.0.1:{upstream.port}", processes=1)
        started.append(relay)
        return relay
    yield make
    for relay in started:
        await relay.stop()


@pytest.mark.parametrize("eight_bit_upstream", [True, False], ids=["8bitmime", "no-8bitmime"])
async def test_every_tracked_copy_verifies_with_relays_key(
        keys: dict[str, tuple[bytes, SigningKey]], relay_with_key: Callable[[Upstream], RelayProcess],
        eight_bit_upstream: bool) -> None:
    upstream = await Upstream(eight_bit=eight_bit_upstream).start()
    try:
        relay = await relay_with_key(upstream).start()
        dns = dns_for(keys)
        # 8-bit parts too: without 8BITMIME upstream they would be converted after signing.
        for cte in ("quoted-printable", "8bit"):
            raw = presigned(keys, "news", cte)
            assert signatures(raw, dns) == [(b"mailer", True)]
            assert (await submit(relay.smtp_port, raw)).startswith("Ok")
        await wait_for(lambda: len(upstream.messages) == 4, 30)
    finally:
        await upstream.stop()

    copies = [m.data for m in upstream.messages]
    assert sorted(r for m in upstream.messages for r in m.rcpts) == sorted(RECIPIENTS * 2)
    for data in copies:
        # relay's signature, and no failing one: the mailer's broke with the links and is gone.
        assert signatures(data, dns) == [(b"s1", True)], relay.output()
        assert not needs_8bitmime(data)  # signed 7-bit, so no upstream had anything to convert
        html = email.message_from_bytes(data, policy=email.policy.default).get_body(("html",))
        assert html is not None
        content = html.get_content()
        assert "Grüße" in content and f"http://127.0.0.1:{relay.http_port}/c/" in content
        assert f"http://127.0.0.1:{relay.http_port}/o/" in content
    assert len(set(copies)) == 4  # each recipient's own tokens
    assert "not DKIM-signed" not in relay.output() and "lose their signatures" not in relay.output()


async def test_untracked_presigned_mail_keeps_its_signature(
        keys: dict[str, tuple[bytes, SigningKey]], relay_with_key: Callable[[Upstream], RelayProcess]) -> None:
    upstream = await Upstream().start()
    try:
        relay = await relay_with_key(upstream).start()
        raw = presigned(keys, "plain")
        await submit(relay.smtp_port, raw)
        await wait_for(lambda: len(upstream.messages) == 1, 30)
    finally:
        await upstream.stop()
    (copy,) = upstream.messages
    assert sorted(copy.rcpts) == RECIPIENTS  # one transaction, one copy
    # Byte for byte as submitted but for the removed set header and relay's Received: on top.
    assert copy.data.endswith(raw.replace(b"X-SES-CONFIGURATION-SET: plain\r\n", b""))
    assert copy.data.startswith(b"Received: ")
    assert signatures(copy.data, dns_for(keys)) == [(b"mailer", True)]


async def test_headers_relay_adds_are_covered_by_its_signature(
        tmp_path: Path, keys: dict[str, tuple[bytes, SigningKey]]) -> None:
    # An untracked set with one-click unsubscribe and a VERP return path: the body is the
    # mailer's, but List-Unsubscribe(-Post) (RFC 8058 §4) and Feedback-ID (Gmail) are relay's.
    (tmp_path / "dkim.pem").write_bytes(keys["relay"][0])
    upstream = await Upstream().start()
    relay = RelayProcess(tmp_path, SETS.replace("[configuration_sets.plain]\n",
                                                "[configuration_sets.plain]\nlist_unsubscribe = true\n")
                         + '[feedback]\nreturn_path_domain = "bounces.example.com"\n'
                         + f'[dkim."example.com"]\nselector = "s1"\nprivate_key = "{tmp_path / "dkim.pem"}"\n',
                         upstream_url=f"smtp://127.0.0.1:{upstream.port}", processes=1)
    try:
        await relay.start()
        raw = presigned(keys, "plain")
        await submit(relay.smtp_port, raw)
        await wait_for(lambda: len(upstream.messages) == 2, 30)
    finally:
        await relay.stop()
        await upstream.stop()
    for copy in upstream.messages:
        headers = email.message_from_bytes(copy.data, policy=email.policy.default)
        assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click" and headers["Feedback-ID"]
        assert copy.mail_from.endswith("@bounces.example.com")
        # relay's signature covers what it added; the mailer's still holds and stays.
        assert signatures(copy.data, dns_for(keys)) == [(b"s1", True), (b"mailer", True)]
        signed = dkim.util.parse_tag_value(headers["DKIM-Signature"].encode().replace(b"\r\n", b""))[b"h"]
        names = {n.strip() for n in signed.split(b":")}
        assert {b"list-unsubscribe", b"list-unsubscribe-post", b"feedback-id"} <= names


def test_a_bad_key_stops_serve_with_one_line(tmp_path: Path) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "weak.pem").write_bytes(weak)
    port = free_port()
    relay = RelayProcess(tmp_path, SETS + f'[dkim."example.com"]\nselector = "s1"\n'
                                          f'private_key = "{tmp_path / "weak.pem"}"\n', smtp_port=port)
    r = subprocess.run([sys.executable, "-m", "relay.cli", "serve", "--config", str(relay.config_path)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"relay: configuration error: {relay.config_path}: dkim.example.com.private_key: expected an unencrypted "
        f"RSA (2048 bits or more) or Ed25519 private key in PEM, got '{tmp_path / 'weak.pem'}': an RSA key of "
        "1024 bits; DKIM keys need 2048 or more"]
    assert not port_open(port)

    (tmp_path / "weak.pem").unlink()  # a key that is not there at all
    r = subprocess.run([sys.executable, "-m", "relay.cli", "serve", "--config", str(relay.config_path)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1
    assert "dkim.example.com.private_key: expected a readable PEM file" in r.stderr
