# relay's sns-format webhook consumed by the real thing: django-ses's SESEventWebhookView
# and django-anymail's AmazonSESTrackingWebhookView, served by Django's own server on
# loopback, fed by a real `relay serve` that delivers to a capture upstream; opens and
# clicks are real HTTP requests. Assertions are on the libraries' own signals.
from __future__ import annotations

import email
import email.policy
import json
import re
import threading
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import aiosmtplib
import pytest

from tests.events.django_site import ANYMAIL_SECRET, RELAY_SECRET, DjangoServer
from tests.support import Capture, RelayProcess, Upstream, free_port, port_open, wait_for

TYPES = '["send", "delivery", "bounce", "open", "click"]'
LINK = "https://shop.example.com/spring?utm_source=mail"
HTML = (
    "From: Shop <shop@example.com>\r\nTo: ana@example.org, bob@example.org, gone@example.org\r\n"
    "Subject: Spring sale\r\nX-SES-CONFIGURATION-SET: app\r\n"
    "X-Tag: spring-sale\r\nX-Metadata: {\"customer\": \"42\"}\r\n"
    "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    f'<html><body><p>Hello</p><a href="{LINK}" ses:tags="campaign:spring;slot:hero">Shop</a></body></html>\r\n'
)
RCPTS = ["ana@example.org", "bob@example.org", "gone@example.org"]


class Signals:
    """What the libraries' signals fired with, from the Django server's threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ses: list[tuple[str, dict[str, Any], dict[str, Any]]] = []  # (name, mail_obj, <name>_obj)
        self.anymail: list[Any] = []  # AnymailTrackingEvent

    def count(self) -> tuple[int, int]:
        with self.lock:
            return len(self.ses), len(self.anymail)


@pytest.fixture
def django_server() -> Any:
    server = DjangoServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def signals(django_server: DjangoServer) -> Any:
    from anymail.signals import tracking
    from django_ses import signals as ses

    got = Signals()
    receivers = []
    for name in ("send", "delivery", "bounce", "open", "click", "complaint"):
        def on_ses(sender: Any, mail_obj: Any, _name: str = name, **kw: Any) -> None:
            with got.lock:
                got.ses.append((_name, mail_obj, kw[f"{_name}_obj"]))
        signal = getattr(ses, f"{name}_received")
        signal.connect(on_ses, weak=False)
        receivers.append((signal, on_ses))

    def on_tracking(sender: Any, event: Any, esp_name: str, **kw: Any) -> None:
        with got.lock:
            got.anymail.append(event)
    tracking.connect(on_tracking, weak=False)
    receivers.append((tracking, on_tracking))
    try:
        yield got
    finally:
        for signal, receiver in receivers:
            signal.disconnect(receiver)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = await Upstream(Capture(rcpt_replies={"gone@example.org": "550 5.1.1 <gone@example.org>: user unknown"})).start()
    try:
        yield up
    finally:
        await up.stop()


def config(django_port: int) -> str:
    user, password = ANYMAIL_SECRET.split(":")
    base = f"127.0.0.1:{django_port}"
    return (
        "[webhook]\nwindow = 2\n"
        "[configuration_sets.app]\n"
        "[[configuration_sets.app.event_destinations]]\n"
        f'name = "djses"\ntype = "webhook"\nformat = "sns"\nurl = "http://{base}/ses/event-webhook/"\n'
        f'secret = "{RELAY_SECRET}"\nmatching_event_types = {TYPES}\n'
        "[[configuration_sets.app.event_destinations]]\n"
        f'name = "anymail"\ntype = "webhook"\nformat = "sns"\nmail_destination = "recipient"\n'
        f'url = "http://{user}:{password}@{base}/anymail/amazon_ses/tracking/"\nmatching_event_types = {TYPES}\n'
    )


def links(data: bytes, base: str) -> tuple[str, str]:
    """The open pixel and the tracked link of one delivered copy."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    pixel = re.search(rf'{re.escape(base)}/o/[^"]+', html)
    click = re.search(rf'{re.escape(base)}/c/[^"]+', html)
    assert pixel and click, html
    return pixel.group(0), click.group(0)


async def test_django_ses_and_anymail_consume_relay_events(
        tmp_path: Path, upstream: Upstream, django_server: DjangoServer, signals: Signals) -> None:
    relay = await RelayProcess(tmp_path, config(django_server.port),
                               upstream_url=f"smtp://127.0.0.1:{upstream.port}").start()
    try:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.smtp_port, timeout=20) as client:
            _, reply = await client.sendmail("shop@example.com", RCPTS, HTML.encode())
        message_id = reply.split()[1]
        # A copy each for ana and bob, and relay's DSN to the sender about gone@.
        await wait_for(lambda: len(upstream.messages) == 3)
        base = f"http://127.0.0.1:{relay.http_port}"
        copies = {m.rcpts[0]: links(m.data, base) for m in upstream.messages if m.rcpts[0] in RCPTS}
        async with aiohttp.ClientSession() as http:
            async with http.get(copies["bob@example.org"][0]) as r:  # bob opens
                assert r.status == 200
            async with http.get(copies["ana@example.org"][1], allow_redirects=False) as r:  # ana clicks
                assert r.status == 302 and r.headers["Location"] == LINK
        # Send, 2 Delivery, Bounce, Open, Click to each; then nothing left to post.
        await wait_for(lambda: signals.count()[0] == 6, 20)
        await wait_for(lambda: relay.query("SELECT count(*) FROM webhook_outbox") == [(0,)], 20)
    finally:
        assert await relay.stop() == 0

    # django-ses: one signal per event, each with relay's message id.
    by_name: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for name, mail, obj in signals.ses:
        assert mail["messageId"] == message_id
        by_name.setdefault(name, []).append((mail, obj))
    assert sorted(by_name) == ["bounce", "click", "delivery", "open", "send"]
    assert sorted(obj["recipients"][0] for _, obj in by_name["delivery"]) == ["ana@example.org", "bob@example.org"]
    [(_, bounce)] = by_name["bounce"]
    assert bounce["bounceType"] == "Permanent"
    assert [r["emailAddress"] for r in bounce["bouncedRecipients"]] == ["gone@example.org"]
    [(_, opened)] = by_name["open"]
    assert opened["recipient"] == "bob@example.org"  # relay's per-recipient field
    [(_, click)] = by_name["click"]
    assert click["link"] == LINK and click["linkTags"] == {"campaign": ["spring"], "slot": ["hero"]}
    assert click["recipient"] == "ana@example.org"
    [(send_mail, _)] = by_name["send"]
    assert send_mail["destination"] == RCPTS  # the destination without mail_destination = "recipient"

    # anymail: with mail_destination = "recipient", each open and click is reported once,
    # for the one recipient it concerns; Send is about the message, so once per recipient.
    got = sorted((e.event_type, e.recipient) for e in signals.anymail)
    assert got == sorted([("sent", r) for r in RCPTS] + [
        ("delivered", "ana@example.org"), ("delivered", "bob@example.org"), ("bounced", "gone@example.org"),
        ("opened", "bob@example.org"), ("clicked", "ana@example.org")])
    for e in signals.anymail:
        assert e.message_id == message_id
        assert e.tags == ["spring-sale"] and e.metadata == {"customer": "42"}
        assert e.esp_event["mail"]["messageId"] == message_id
    [clicked] = [e for e in signals.anymail if e.event_type == "clicked"]
    assert clicked.click_url == LINK
    assert clicked.esp_event["click"]["linkTags"] == {"campaign": ["spring"], "slot": ["hero"]}  # as SES has them
    [bounced] = [e for e in signals.anymail if e.event_type == "bounced"]
    assert "Permanent" in bounced.description
    assert len({e.event_id for e in signals.anymail if e.event_type != "sent"}) == 5  # SNS MessageIds
    json.dumps([e.esp_event for e in signals.anymail])  # the records as the library kept them


async def test_consumers_read_bounces_and_complaints_from_the_feedback_loop(
        tmp_path: Path, upstream: Upstream, django_server: DjangoServer, signals: Signals) -> None:
    """A DSN and an ARF report mailed back to relay reach django-ses and anymail as SES
    Bounce and Complaint notifications, attributed to the one recipient they are about."""
    from tests.test_feedback_e2e import arf, postfix_dsn, send_report

    port = free_port()
    body = config(django_server.port).replace(TYPES, '["bounce", "complaint"]') + (
        f'[feedback]\nreturn_path_domain = "bounces.example.com"\nlisten = "127.0.0.1:{port}"\n'
        'addresses = ["fbl@example.com"]\n')
    relay = await RelayProcess(tmp_path, body, upstream_url=f"smtp://127.0.0.1:{upstream.port}").start()
    try:
        await wait_for(lambda: port_open(port))
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.smtp_port, timeout=20) as client:
            _, reply = await client.sendmail("shop@example.com", RCPTS[:2], HTML.encode())
        message_id = reply.split()[1]
        await wait_for(lambda: len(upstream.messages) == 2)
        copy = {m.rcpts[0]: m for m in upstream.messages}
        bob = copy["bob@example.org"]
        send_report(port, bob.mail_from, postfix_dsn(bob.mail_from, "bob@example.org", bob.data))
        ana = copy["ana@example.org"]
        send_report(port, "fbl@example.com", arf(ana.data, rcpt="ana@example.org", return_path=ana.mail_from))
        await wait_for(lambda: signals.count() == (2, 2), 20)
    finally:
        assert await relay.stop() == 0

    by_name = {name: (mail, obj) for name, mail, obj in signals.ses}
    assert sorted(by_name) == ["bounce", "complaint"]
    mail, bounce = by_name["bounce"]
    assert mail["messageId"] == message_id and mail["source"] == "shop@example.com"
    assert (bounce["bounceType"], bounce["bounceSubType"]) == ("Permanent", "NoEmail")
    assert [r["emailAddress"] for r in bounce["bouncedRecipients"]] == ["bob@example.org"]
    _, complaint = by_name["complaint"]
    assert complaint["complainedRecipients"] == [{"emailAddress": "ana@example.org"}]
    assert complaint["complaintFeedbackType"] == "abuse"
    got = sorted((e.event_type, e.recipient) for e in signals.anymail)
    assert got == [("bounced", "bob@example.org"), ("complained", "ana@example.org")]
    for e in signals.anymail:
        assert e.message_id == message_id


def test_django_ses_view_of_the_readme_refuses_what_relay_did_not_sign(
        django_server: DjangoServer, signals: Signals) -> None:
    """With AWS's signature check off, the README's RelayEventWebhookView checks relay's
    X-Relay-Signature: a forged, altered or stale notification is refused (401), no signal."""
    import time
    import urllib.error
    import urllib.request

    from relay.events.webhook import sign

    record = {"eventType": "Send", "mail": {"messageId": "m-1", "destination": ["ana@example.org"]}, "send": {}}
    body = json.dumps({"Type": "Notification", "MessageId": "n-1", "TopicArn": "arn:aws:sns:relay:000000000000:app-djses",
                       "Message": json.dumps(record), "Timestamp": "2026-01-01T00:00:00.000Z"})

    def post(data: str, ts: int, signature: str | None) -> int:
        headers = {"Content-Type": "text/plain; charset=UTF-8", "X-Relay-Timestamp": str(ts)}
        if signature is not None:
            headers["X-Relay-Signature"] = signature
        req = urllib.request.Request(f"http://127.0.0.1:{django_server.port}/ses/event-webhook/",
                                     data=data.encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return e.code

    now = int(time.time())
    assert post(body, now, None) == 401  # unsigned
    assert post(body, now, sign("not-the-secret", str(now), body)) == 401  # forged
    assert post(body.replace("m-1", "m-2"), now, sign(RELAY_SECRET, str(now), body)) == 401  # altered
    assert post(body, now - 600, sign(RELAY_SECRET, str(now - 600), body)) == 401  # replayed later
    assert signals.count() == (0, 0)
    assert post(body, now, sign(RELAY_SECRET, str(now), body)) == 200  # what relay sends
    assert [(name, mail["messageId"]) for name, mail, _ in signals.ses] == [("send", "m-1")]
