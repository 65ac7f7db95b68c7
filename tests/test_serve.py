# End to end through `relay serve` as a subprocess: a real SMTP client, the relay,
# and an aiosmtpd capture server as the upstream, all on loopback.
from __future__ import annotations

import asyncio
import base64
import email
import json
import mailbox
import signal
import subprocess
import sys
from email import policy
from pathlib import Path

import aiosmtplib
import pytest

from tests.support import Capture, RelayProcess, Upstream, free_port, wait_for

PLAIN_SET = """
[configuration_sets.plain]
[[configuration_sets.plain.event_destinations]]
name = "db"
type = "sqlite"
matching_event_types = ["send", "delivery", "bounce", "deliveryDelay", "reject"]
[[configuration_sets.plain.event_destinations]]
name = "jsonl"
type = "file"
path = "events.jsonl"
matching_event_types = ["send", "delivery"]
"""

MESSAGE = (
    "From: Ana <ana@example.com>\r\nTo: bob@example.org\r\nSubject: Hello\r\n"
    "Message-ID: <m1@example.com>\r\nX-SES-CONFIGURATION-SET: plain\r\n"
    "X-SES-MESSAGE-TAGS: campaign=spring, variant=b\r\n\r\n"
    "Hi Bob,\r\nsee https://example.com/a?x=1&y=2 \r\n"
)


async def submit(port: int, data: str | bytes, *, sender: str = "ana@example.com",
                 rcpts: list[str] | None = None) -> str:
    """Send one message; returns the reply text (raises on refusal)."""
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=20) as client:
        errors, reply = await client.sendmail(sender, rcpts or ["bob@example.org"],
                                              data if isinstance(data, bytes) else data.encode())
        return reply


def events(relay: RelayProcess, event_type: str | None = None) -> list[dict]:
    sql = "SELECT body FROM events" + (" WHERE event_type = ?" if event_type else "") + " ORDER BY seq"
    return [json.loads(b) for (b,) in relay.query(sql, (event_type,) if event_type else ())]


async def restart_with(relay: RelayProcess, smtp_keys: str) -> None:
    """Restart the relay with extra [smtp] keys."""
    await relay.stop()
    relay.config_path.write_text(relay.config_path.read_text().replace(
        'hostname = "relay.test"\n', 'hostname = "relay.test"\n' + smtp_keys))
    await relay.start()


@pytest.fixture
async def upstream():
    up = await Upstream().start()
    yield up
    await up.stop()


@pytest.fixture
async def relay_factory(tmp_path: Path):
    started: list[RelayProcess] = []

    async def make(body: str = PLAIN_SET, **kw) -> RelayProcess:
        r = RelayProcess(tmp_path, body, **kw)
        await r.start()
        started.append(r)
        return r
    yield make
    for r in started:
        await r.stop()


async def test_accept_and_forward_untracked_bytes_unchanged(upstream: Upstream, relay_factory) -> None:
    relay = await relay_factory(upstream_url=f"smtp://127.0.0.1:{upstream.port}")
    reply = await submit(relay.smtp_port, MESSAGE)
    assert reply.startswith("Ok ")
    message_id = reply.split()[1]
    await wait_for(lambda: upstream.messages)
    got = upstream.messages[0]
    assert got.mail_from == "ana@example.com" and got.rcpts == ["bob@example.org"]
    # Only the trace header was prepended and the two SES headers removed.
    trace, rest = got.data.split(b"\r\nFrom: ", 1)
    assert trace.startswith(b"Received: from ") and f"id {message_id}".encode() in trace
    expected = MESSAGE.replace("X-SES-CONFIGURATION-SET: plain\r\n", "").replace(
        "X-SES-MESSAGE-TAGS: campaign=spring, variant=b\r\n", "")
    assert b"From: " + rest == expected.encode()
    # Events: Send then Delivery, with SES's mail object.
    await wait_for(lambda: events(relay, "Delivery"))
    send = events(relay, "Send")[0]
    assert send["mail"]["messageId"] == message_id
    assert send["mail"]["tags"]["campaign"] == ["spring"]
    assert send["mail"]["tags"]["ses:configuration-set"] == ["plain"]
    assert send["mail"]["tags"]["ses:from-domain"] == ["example.com"]
    assert send["mail"]["tags"]["ses:source-ip"] == ["127.0.0.1"]
    names = [h["name"] for h in send["mail"]["headers"]]
    assert "X-SES-CONFIGURATION-SET" in names  # as submitted
    delivery = events(relay, "Delivery")[0]["delivery"]
    assert delivery["recipients"] == ["bob@example.org"] and delivery["smtpResponse"].startswith("250")
    lines = await wait_for(lambda: (relay.tmp / "events.jsonl").exists()
                           and (relay.tmp / "events.jsonl").read_text().splitlines()[1:])
    assert json.loads(lines[0])["eventType"] == "Delivery"


async def test_default_set_used_without_header(upstream: Upstream, relay_factory) -> None:
    relay = await relay_factory(upstream_url=f"smtp://127.0.0.1:{upstream.port}")
    await restart_with(relay, 'default_configuration_set = "plain"\n')
    await submit(relay.smtp_port, "From: a@example.com\r\nSubject: no header\r\n\r\nhi\r\n")
    send = await wait_for(lambda: events(relay, "Send"))
    assert send[0]["mail"]["tags"]["ses:configuration-set"] == ["plain"]


async def test_no_set_no_events_still_delivered(upstream: Upstream, relay_factory) -> None:
    relay = await relay_factory(upstream_url=f"smtp://127.0.0.1:{upstream.port}")
    rcpts = ["b@example.org", "c@example.org", "d@example.org"]
    await submit(relay.smtp_port, "From: a@example.com\r\nSubject: plain\r\n\r\nhi\r\n", rcpts=rcpts)
    await wait_for(lambda: upstream.messages)
    await asyncio.sleep(0.3)
    assert events(relay) == []
    # Untracked: one upstream transaction for all recipients.
    assert len(upstream.messages) == 1 and upstream.messages[0].rcpts == rcpts


async def test_unknown_set_refused_nothing_queued(upstream: Upstream, relay_factory) -> None:
    relay = await relay_factory(upstream_url=f"smtp://127.0.0.1:{upstream.port}")
    with pytest.raises(aiosmtplib.SMTPDataError) as e:
        await submit(relay.smtp_port, MESSAGE.replace("plain", "nosuchset"))
    assert e.value.code == 554 and "Configuration set <nosuchset> does not exist" in e.value.message
    assert relay.query("SELECT count(*) FROM messages") == [(0,)]


async def test_bad_tags_refused(upstream: Upstream, relay_factory) -> None:
    relay = await relay_factory(upstream_url=f"smtp://127.0.0.1:{upstream.port}")
    with pytest.raises(aiosmtplib.SMTPDataError) as e:
        await submit(relay.smtp_port, MESSAGE.replace("variant=b", "variant=b c"))
    assert e.value.code == 554 and "Invalid message tag" in e.value.message
    assert relay.query("SELECT count(*) FROM messages") == [(0,)]


async def test_oversize_refused(upstream: Upstream, relay_factory) -> None:
    relay = await relay_factory(upstream_url=f"smtp://127.0.0.1:{upstream.port}")
    await restart_with(relay, "max_message_size = 2048\n")
    with pytest.raises(aiosmtplib.SMTPException) as e:
        await submit(relay.smtp_port, MESSAGE + "x" * 5000)
    assert "552" in str(e.value)
    assert relay.query("SELECT count(*) FROM messages") == [(0,)]


async def test_upstream_4xx_then_recovers(relay_factory) -> None:
    up = await Upstream(Capture(data_replies=["451 4.3.0 try later", "451 4.3.0 still busy"])).start()
    try:
        relay = await relay_factory(upstream_url=f"smtp://127.0.0.1:{up.port}")
        await submit(relay.smtp_port, MESSAGE)
        await wait_for(lambda: up.messages, 20)
        await wait_for(lambda: events(relay, "Delivery"))
        delays = events(relay, "DeliveryDelay")
        assert len(delays) == 2
        d = delays[0]["deliveryDelay"]
        assert d["delayedRecipients"][0]["emailAddress"] == "bob@example.org"
        assert "451" in d["delayedRecipients"][0]["diagnosticCode"]
        assert len(up.messages) == 1
    finally:
        await up.stop()


async def test_upstream_5xx_bounce_and_dsn(relay_factory) -> None:
    up = await Upstream(Capture(rcpt_replies={"nobody@example.org": "550 5.1.1 user unknown"})).start()
    try:
        relay = await relay_factory(upstream_url=f"smtp://127.0.0.1:{up.port}")
        await submit(relay.smtp_port, MESSAGE, rcpts=["bob@example.org", "nobody@example.org"])
        await wait_for(lambda: len(up.messages) >= 2)
        original, notice = up.messages[0], up.messages[1]
        assert original.rcpts == ["bob@example.org"]
        assert notice.mail_from == "<>" and notice.rcpts == ["ana@example.com"]  # null sender: no loops
        dsn = email.message_from_bytes(notice.data, policy=policy.default)
        assert dsn.get_content_type() == "multipart/report"
        assert "nobody@example.org" in notice.data.decode()
        assert "5.1.1" in notice.data.decode()
        bounces = await wait_for(lambda: events(relay, "Bounce"))
        b = bounces[0]["bounce"]
        assert b["bounceType"] == "Permanent"
        assert b["bouncedRecipients"][0]["emailAddress"] == "nobody@example.org"
        assert len(events(relay, "Delivery")) == 1
    finally:
        await up.stop()


async def test_null_sender_bounce_gets_no_dsn(relay_factory) -> None:
    up = await Upstream(Capture(rcpt_replies={"nobody@example.org": "550 5.1.1 user unknown"})).start()
    try:
        relay = await relay_factory(upstream_url=f"smtp://127.0.0.1:{up.port}")
        await submit(relay.smtp_port, MESSAGE, sender="", rcpts=["nobody@example.org"])
        await wait_for(lambda: events(relay, "Bounce"))
        await asyncio.sleep(0.5)
        assert up.messages == []
    finally:
        await up.stop()


async def test_upstream_down_then_up(relay_factory) -> None:
    port = free_port()
    relay = await relay_factory(upstream_url=f"smtp://127.0.0.1:{port}")
    await submit(relay.smtp_port, MESSAGE)
    await wait_for(lambda: events(relay, "DeliveryDelay"))
    up = await Upstream(port=port).start()
    try:
        await wait_for(lambda: up.messages, 20)
        await wait_for(lambda: events(relay, "Delivery"))
        delay = events(relay, "DeliveryDelay")[0]["deliveryDelay"]
        assert delay["delayType"] == "TransientCommunicationFailure"
    finally:
        await up.stop()


async def test_gives_up_after_max_delivery_seconds(relay_factory) -> None:
    port = free_port()
    relay = await relay_factory(PLAIN_SET, upstream_url=f"smtp://127.0.0.1:{port}")
    await relay.stop()
    relay.config_path.write_text(relay.config_path.read_text().replace(
        "retry_max_delay = 1\n", "retry_max_delay = 1\nmax_delivery_seconds = 1.5\n"))
    await relay.start()
    await submit(relay.smtp_port, MESSAGE, sender="")
    bounce = await wait_for(lambda: events(relay, "Bounce"), 20)
    assert bounce[0]["bounce"]["bounceType"] == "Transient"
    assert relay.query("SELECT state FROM recipients") == [("bounced",)]


async def test_kill_9_after_250_then_restart_delivers(relay_factory) -> None:
    port = free_port()
    relay = await relay_factory(upstream_url=f"smtp://127.0.0.1:{port}")
    reply = await submit(relay.smtp_port, MESSAGE)
    await relay.stop(signal.SIGKILL)  # no chance to flush anything
    up = await Upstream(port=port).start()
    try:
        await relay.start()
        await wait_for(lambda: up.messages, 20)
        assert f"id {reply.split()[1]}".encode() in up.messages[0].data
        await asyncio.sleep(0.5)
        assert len(up.messages) == 1
    finally:
        await up.stop()


async def test_concurrent_clients_all_delivered_exactly_once(upstream: Upstream, relay_factory) -> None:
    relay = await relay_factory(upstream_url=f"smtp://127.0.0.1:{upstream.port}")

    async def client(c: int) -> list[str]:
        ids = []
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.smtp_port, timeout=60) as s:
            for i in range(50):
                body = f"From: a@example.com\r\nSubject: {c}-{i}\r\n\r\nmessage {c}-{i}\r\n"
                _, reply = await s.sendmail("a@example.com", [f"r{c}@example.org"], body.encode())
                ids.append(reply.split()[1])
        return ids

    results = await asyncio.wait_for(asyncio.gather(*(client(c) for c in range(20))), 120)
    ids = [i for r in results for i in r]
    assert len(set(ids)) == 1000
    await wait_for(lambda: len(upstream.messages) >= 1000, 120)
    await asyncio.sleep(0.5)
    subjects = [m.data.split(b"Subject: ")[1].split(b"\r\n")[0] for m in upstream.messages]
    assert len(subjects) == 1000 and len(set(subjects)) == 1000
    # Connections were reused, not one per message.
    assert upstream.handler.sessions <= 20


async def test_maildir_upstream(relay_factory, tmp_path: Path) -> None:
    relay = await relay_factory(upstream_url="maildir:outbox")
    reply = await submit(relay.smtp_port, MESSAGE)
    new = tmp_path / "outbox" / "new"
    await wait_for(lambda: new.is_dir() and len(list(new.iterdir())) == 1)
    box = mailbox.Maildir(str(tmp_path / "outbox"), create=False)
    msg = box.get_bytes(box.keys()[0])
    assert f"id {reply.split()[1]}".encode() in msg and b"Return-Path: <ana@example.com>" in msg
    assert b"X-SES-CONFIGURATION-SET" not in msg


async def test_not_an_open_relay(upstream: Upstream, relay_factory) -> None:
    relay = await relay_factory(upstream_url=f"smtp://127.0.0.1:{upstream.port}")
    await restart_with(relay, 'allowed_clients = ["127.0.0.2"]\n')
    with pytest.raises(aiosmtplib.SMTPConnectResponseError) as e:  # refused in the greeting
        await submit(relay.smtp_port, MESSAGE)
    assert e.value.code == 554 and "allowed_clients" in e.value.message


async def test_sigterm_exits_zero_and_keeps_pending(relay_factory) -> None:
    port = free_port()
    relay = await relay_factory(upstream_url=f"smtp://127.0.0.1:{port}")
    await submit(relay.smtp_port, MESSAGE)
    assert await relay.stop(signal.SIGTERM) == 0
    assert relay.query("SELECT state FROM recipients") == [("pending",)]


async def test_ehlo_advertises_extensions(upstream: Upstream, relay_factory) -> None:
    relay = await relay_factory(upstream_url=f"smtp://127.0.0.1:{upstream.port}")
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.smtp_port, timeout=10) as s:
        for ext in ("size", "8bitmime", "smtputf8", "pipelining"):
            assert s.supports_extension(ext), ext


EIGHT_BIT = ("From: a@example.com\r\nSubject: caf\u00e9\r\n".replace("caf\u00e9", "cafe")
             + "X-SES-CONFIGURATION-SET: plain\r\nMIME-Version: 1.0\r\n"
             "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
             "Gr\u00fc\u00dfe aus K\u00f6ln \u2013 \u00e7a va?\r\n")


async def test_8bit_downgraded_for_upstream_without_8bitmime(relay_factory) -> None:
    up = await Upstream(eight_bit=False).start()
    try:
        relay = await relay_factory(upstream_url=f"smtp://127.0.0.1:{up.port}")
        await submit(relay.smtp_port, EIGHT_BIT.encode("utf-8"))
        await wait_for(lambda: up.messages)
        data = up.messages[0].data
        assert max(data) < 128  # nothing 8-bit went to an upstream that did not offer it
        msg = email.message_from_bytes(data, policy=policy.default)
        assert msg["Content-Transfer-Encoding"] == "quoted-printable"
        assert msg.get_content() == "Gr\u00fc\u00dfe aus K\u00f6ln \u2013 \u00e7a va?\r\n"
    finally:
        await up.stop()


async def test_utf8_headers_bounce_when_upstream_lacks_smtputf8(relay_factory) -> None:
    up = await Upstream(eight_bit=False, smtputf8=False).start()
    try:
        relay = await relay_factory(upstream_url=f"smtp://127.0.0.1:{up.port}")
        await submit(relay.smtp_port, EIGHT_BIT.replace("Subject: cafe", "Subject: caf\u00e9").encode("utf-8"),
                     sender="")
        bounce = await wait_for(lambda: events(relay, "Bounce"))
        assert "SMTPUTF8" in bounce[0]["bounce"]["bouncedRecipients"][0]["diagnosticCode"]
        assert up.messages == []
    finally:
        await up.stop()


async def test_sigterm_lets_transaction_in_flight_finish(upstream: Upstream, relay_factory) -> None:
    relay = await relay_factory(upstream_url=f"smtp://127.0.0.1:{upstream.port}")
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.smtp_port, timeout=20)
    await client.connect()
    try:
        await client.mail("ana@example.com")
        await client.rcpt("bob@example.org")
        assert relay.proc is not None
        relay.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        reply = await client.data(MESSAGE.encode())
        assert reply.code == 250
    finally:
        client.close()
    assert await relay.stop() == 0
    assert relay.query("SELECT count(*) FROM messages") == [(1,)]


async def test_smtp_auth_users_and_caller_identity(upstream: Upstream, relay_factory) -> None:
    relay = await relay_factory(upstream_url=f"smtp://127.0.0.1:{upstream.port}")
    await relay.stop()
    text = relay.config_path.read_text().replace(
        'hostname = "relay.test"\n', 'hostname = "relay.test"\nauth_required = true\n'
        '[smtp.users]\napp = "s3cret-pass"\n', 1)
    relay.config_path.write_text(text)
    await relay.start()
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.smtp_port, timeout=10) as s:
        assert s.supports_extension("auth")
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as e:  # no AUTH yet
            await s.sendmail("ana@example.com", ["bob@example.org"], MESSAGE.encode())
        assert e.value.code == 530
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as e2:
            await s.login("app", "wrong")
        assert e2.value.code == 535
        await s.login("app", "s3cret-pass")
        await s.sendmail("ana@example.com", ["bob@example.org"], MESSAGE.encode())
    send = await wait_for(lambda: events(relay, "Send"))
    assert send[0]["mail"]["tags"]["ses:caller-identity"] == ["app"]
    log = relay.output()
    for secret in ("s3cret-pass", base64.b64encode(b"\0app\0s3cret-pass").decode(),
                   base64.b64encode(b"s3cret-pass").decode()):
        assert secret not in log


async def test_smtputf8_addresses_relayed(upstream: Upstream, relay_factory) -> None:
    relay = await relay_factory(upstream_url=f"smtp://127.0.0.1:{upstream.port}")
    data = EIGHT_BIT.replace("Subject: cafe", "Subject: caf\u00e9").encode("utf-8")
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.smtp_port, timeout=20) as s:
        await s.sendmail("s\u00e9n@example.com", ["j\u00fcrgen@example.org"], data, mail_options=["SMTPUTF8"])
    await wait_for(lambda: upstream.messages)
    got = upstream.messages[0]
    assert got.mail_from == "s\u00e9n@example.com" and got.rcpts == ["j\u00fcrgen@example.org"]
    assert "Subject: caf\u00e9".encode() in got.data


async def test_8bit_passes_unchanged_when_upstream_offers_8bitmime(upstream: Upstream, relay_factory) -> None:
    relay = await relay_factory(upstream_url=f"smtp://127.0.0.1:{upstream.port}")
    data = EIGHT_BIT.encode("utf-8")
    await submit(relay.smtp_port, data)
    await wait_for(lambda: upstream.messages)
    assert upstream.messages[0].data.endswith(data.split(b"X-SES-CONFIGURATION-SET: plain\r\n")[1])


async def test_serve_prunes_raw_events_on_its_own_and_keeps_the_counters(upstream: Upstream, tmp_path: Path) -> None:
    """[storage] retention_days applies without `relay prune`: `relay serve` drops the raw
    events behind `relay events` and timelines on its own; the hourly counters behind
    `relay stats` stay (stats_retention_days), and so does the sqlite destination's table."""
    relay = RelayProcess(tmp_path, PLAIN_SET, upstream_url=f"smtp://127.0.0.1:{upstream.port}")
    relay.config_path.write_text(relay.config_path.read_text().replace(
        f'path = "{relay.db}"\n', f'path = "{relay.db}"\nretention_days = 0.0001\n'))  # 8.6 s
    await relay.start()
    try:
        await submit(relay.smtp_port, MESSAGE)
        await wait_for(lambda: relay.query("SELECT count(*) FROM event_log WHERE event_type = 'Delivery'") == [(1,)])
        await wait_for(lambda: relay.query("SELECT count(*) FROM event_log") == [(0,)], 30)
        assert relay.query("SELECT metric, sum(count) FROM stats_hourly WHERE metric IN ('send', 'delivery') "
                           "GROUP BY metric ORDER BY metric") == [("delivery", 1), ("send", 1)]
        assert [e["eventType"] for e in events(relay)] == ["Send", "Delivery"]
    finally:
        assert await relay.stop() == 0


async def test_check_config_prints_the_warnings_serve_logs(tmp_path: Path) -> None:
    """`relay check-config` prints on stderr the same start-up warnings `relay serve` logs."""
    relay = RelayProcess(tmp_path, PLAIN_SET)
    relay.config_path.write_text(relay.config_path.read_text().replace(
        'hostname = "relay.test"\n', 'hostname = "relay.test"\nmax_recipients = 20000\n'))
    checked = subprocess.run([sys.executable, "-m", "relay.cli", "check-config", "--config", str(relay.config_path)],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert checked.returncode == 0 and "OK" in checked.stdout
    warnings = [line.removeprefix("relay: warning: ") for line in checked.stderr.splitlines()]
    assert len(warnings) == 1 and "smtp.max_recipients is 20000" in warnings[0]
    await relay.start()
    try:
        await wait_for(lambda: "smtp.max_recipients" in relay.output())
        logged = [line for line in relay.output().splitlines() if " WARNING " in line]
        assert logged and all(line.endswith(" WARNING relay: " + warnings[0]) for line in logged), logged
    finally:
        assert await relay.stop() == 0
