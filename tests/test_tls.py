# TLS on both sides: upstream STARTTLS (587-style) and implicit TLS (465-style) with AUTH
# against a real aiosmtpd server, and STARTTLS + AUTH on intake; certificates from trustme.
from __future__ import annotations

import asyncio
import ssl
import warnings
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import trustme
from aiosmtpd.smtp import SMTP, AuthResult

from tests.support import Capture, RelayProcess, Upstream, wait_for
from tests.test_serve import MESSAGE, PLAIN_SET, events, submit


def check_login(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    return AuthResult(success=(auth_data.login, auth_data.password) == (b"relay", b"p@ss:word"), handled=False)


class TlsUpstream(Upstream):
    def __init__(self, ctx: ssl.SSLContext, *, implicit: bool) -> None:
        super().__init__(Capture())
        self.ctx, self.implicit = ctx, implicit
        self.tls_sessions = 0

    async def start(self) -> "TlsUpstream":
        def factory() -> SMTP:
            with warnings.catch_warnings():
                # Implicit TLS is invisible to aiosmtpd, which warns about AUTH "without TLS".
                warnings.simplefilter("ignore")
                proto = SMTP(self.handler, hostname="upstream.test", auth_required=True,
                             tls_context=None if self.implicit else self.ctx,
                             require_starttls=not self.implicit, authenticator=check_login,
                             auth_require_tls=not self.implicit)
            self._protocols.append(proto)
            return proto
        self._server = await asyncio.get_running_loop().create_server(
            factory, "127.0.0.1", self.port, ssl=self.ctx if self.implicit else None)
        return self


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    return ctx


@pytest.mark.parametrize("scheme, implicit", [("smtp+starttls", False), ("smtps", True)])
async def test_tls_and_auth_upstream(tmp_path: Path, ca: trustme.CA, scheme: str, implicit: bool) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    up = await TlsUpstream(server_context(ca), implicit=implicit).start()
    url = f"{scheme}://relay:p%40ss%3Aword@127.0.0.1:{up.port}"
    relay = RelayProcess(tmp_path, PLAIN_SET, upstream_url=url)
    relay.config_path.write_text(relay.config_path.read_text().replace(
        "[upstream]\n", f'[upstream]\ntls_ca_file = "{ca_file}"\n'))
    try:
        await relay.start()
        await submit(relay.smtp_port, MESSAGE)
        await wait_for(lambda: up.messages)
        assert up.messages[0].rcpts == ["bob@example.org"]
        assert "p@ss:word" not in relay.output()
    finally:
        await relay.stop()
        await up.stop()


async def test_untrusted_certificate_defers_not_bounces(tmp_path: Path, ca: trustme.CA) -> None:
    up = await TlsUpstream(server_context(ca), implicit=True).start()
    relay = RelayProcess(tmp_path, PLAIN_SET, upstream_url=f"smtps://relay:p%40ss%3Aword@127.0.0.1:{up.port}")
    try:
        await relay.start()
        await submit(relay.smtp_port, MESSAGE)
        delay = await wait_for(lambda: events(relay, "DeliveryDelay"))
        assert "CERTIFICATE_VERIFY_FAILED" in delay[0]["deliveryDelay"]["delayedRecipients"][0]["diagnosticCode"]
        assert up.messages == [] and events(relay, "Bounce") == []
    finally:
        await relay.stop()
        await up.stop()


async def test_wrong_password_defers_with_reason(tmp_path: Path, ca: trustme.CA) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    up = await TlsUpstream(server_context(ca), implicit=False).start()
    relay = RelayProcess(tmp_path, PLAIN_SET, upstream_url=f"smtp+starttls://relay:Wr0ngPa55@127.0.0.1:{up.port}")
    relay.config_path.write_text(relay.config_path.read_text().replace(
        "[upstream]\n", f'[upstream]\ntls_ca_file = "{ca_file}"\n'))
    try:
        await relay.start()
        await submit(relay.smtp_port, MESSAGE)
        delay = await wait_for(lambda: events(relay, "DeliveryDelay"))
        diagnostic = delay[0]["deliveryDelay"]["delayedRecipients"][0]["diagnosticCode"]
        assert "AUTH failed" in diagnostic and "535" in diagnostic
        assert events(relay, "Bounce") == [] and "Wr0ngPa55" not in relay.output()
    finally:
        await relay.stop()
        await up.stop()


async def test_intake_starttls_then_auth(tmp_path: Path, ca: trustme.CA) -> None:
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    up = await Upstream().start()
    relay = RelayProcess(tmp_path, PLAIN_SET, upstream_url=f"smtp://127.0.0.1:{up.port}")
    relay.config_path.write_text(relay.config_path.read_text().replace(
        'hostname = "relay.test"\n',
        f'hostname = "relay.test"\ntls_cert = "{cert_file}"\ntls_key = "{key_file}"\n'
        'auth_required = true\n[smtp.users]\napp = "s3cret-pass"\n'))
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    try:
        await relay.start()
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.smtp_port, timeout=10,
                                   start_tls=False) as s:
            await s.ehlo()
            assert s.supports_extension("starttls")
            assert not s.supports_extension("auth")  # no AUTH in clear when TLS is configured
            await s.starttls(tls_context=client_ctx)
            await s.ehlo()
            assert s.supports_extension("auth")
            await s.login("app", "s3cret-pass")
            await s.sendmail("ana@example.com", ["bob@example.org"], MESSAGE.encode())
        await wait_for(lambda: up.messages)
        send = events(relay, "Send")[0]
        assert send["mail"]["tags"]["ses:caller-identity"] == ["app"]
    finally:
        await relay.stop()
        await up.stop()
