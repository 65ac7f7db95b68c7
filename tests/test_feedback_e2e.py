"""The feedback loop end to end: `relay serve` sends each copy with a VERP return path and a
Feedback-ID; DSNs and ARF reports mailed to its feedback listener become SES Bounce and
Complaint events for exactly that message and recipient; anything else is refused or
recorded nowhere."""
from __future__ import annotations

import asyncio
import re
import smtplib
from pathlib import Path

import aiosmtplib
import pytest

from relay.intake import new_message_id
from relay.return_path import ReturnPathClaim, ReturnPaths
from tests.support import Capture, RelayProcess, Upstream, free_port, port_open, wait_for
from tests.test_serve import submit
from tests.test_tracking import db_events

DOMAIN = "bounces.example.com"
RCPTS = ["ana@example.org", "bob@example.org"]

CONFIG = """
[feedback]
return_path_domain = "bounces.example.com"
listen = "127.0.0.1:{port}"
addresses = ["fbl@example.com"]
max_message_size = 200000

[configuration_sets.news]
[[configuration_sets.news.event_destinations]]
name = "all"
type = "sqlite"
matching_event_types = ["send", "delivery", "bounce", "complaint", "open", "click"]

[configuration_sets.plain]
[[configuration_sets.plain.event_destinations]]
name = "all"
type = "sqlite"
matching_event_types = ["send", "delivery", "bounce", "complaint"]
"""

MESSAGE = (
    "From: News <news@example.com>\r\nTo: ana@example.org, bob@example.org\r\n"
    "Subject: Spring sale\r\nMessage-ID: <spring-{n}@example.com>\r\n"
    "X-SES-CONFIGURATION-SET: {cset}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n"
    "Our spring sale starts today.\r\n")


def postfix_dsn(verp: str, recipient: str, original: bytes, *, status: str = "5.1.1",
                diagnostic: str = "550 5.1.1 <{r}>: Recipient address rejected: User unknown in local recipient table",
                action: str = "failed") -> bytes:
    """A DSN as Postfix writes it (RFC 3464), to the VERP return path of the copy."""
    headers = original.split(b"\r\n\r\n", 1)[0].decode()
    return f"""Return-Path: <>\r
From: MAILER-DAEMON@mx.example.org (Mail Delivery System)\r
Subject: Undelivered Mail Returned to Sender\r
To: {verp}\r
Auto-Submitted: auto-replied\r
MIME-Version: 1.0\r
Content-Type: multipart/report; report-type=delivery-status;\r
\tboundary="3F1A2.1764453600/mx.example.org"\r
Message-Id: <20261129220000.3F1A2@mx.example.org>\r
\r
This is a MIME-encapsulated message.\r
\r
--3F1A2.1764453600/mx.example.org\r
Content-Description: Notification\r
Content-Type: text/plain; charset=us-ascii\r
\r
This is the mail system at host mx.example.org.\r
\r
I'm sorry to have to inform you that your message could not\r
be delivered to one or more recipients.\r
\r
--3F1A2.1764453600/mx.example.org\r
Content-Description: Delivery report\r
Content-Type: message/delivery-status\r
\r
Reporting-MTA: dns; mx.example.org\r
X-Postfix-Queue-ID: 3F1A2\r
X-Postfix-Sender: rfc822; {verp}\r
Arrival-Date: Sun, 29 Nov 2026 22:00:00 +0000 (UTC)\r
\r
Final-Recipient: rfc822; {recipient}\r
Original-Recipient: rfc822;{recipient}\r
Action: {action}\r
Status: {status}\r
Remote-MTA: dns; mail.example.org\r
Diagnostic-Code: smtp; {diagnostic.format(r=recipient)}\r
\r
--3F1A2.1764453600/mx.example.org\r
Content-Description: Undelivered Message Headers\r
Content-Type: text/rfc822-headers\r
\r
{headers}\r
\r
--3F1A2.1764453600/mx.example.org--\r
""".encode()


def arf(original: bytes, *, rcpt: str | None, return_path: str | None) -> bytes:
    """An RFC 5965 abuse report as a mailbox provider's feedback loop sends it."""
    head, _, body = original.partition(b"\r\n\r\n")
    if return_path is not None:
        head = f"Return-Path: <{return_path}>\r\n".encode() + head
    rcpt_line = f"Original-Rcpt-To: <{rcpt}>\r\n" if rcpt else ""
    return (f"""From: Feedback Loop <staff@fbl.example.net>\r
To: fbl@example.com\r
Subject: complaint about message from 127.0.0.1\r
MIME-Version: 1.0\r
Content-Type: multipart/report; report-type=feedback-report; boundary="part1_13d.2e68ed54_boundary"\r
\r
--part1_13d.2e68ed54_boundary\r
Content-Type: text/plain; charset="US-ASCII"\r
Content-Transfer-Encoding: 7bit\r
\r
This is an email abuse report for an email message received from IP 127.0.0.1.\r
\r
--part1_13d.2e68ed54_boundary\r
Content-Type: message/feedback-report\r
\r
Feedback-Type: abuse\r
User-Agent: SomeGenerator/1.0\r
Version: 1\r
Original-Mail-From: <{return_path or 'news@example.com'}>\r
{rcpt_line}Arrival-Date: Sun, 29 Nov 2026 22:01:00 +0000\r
Source-IP: 127.0.0.1\r
\r
--part1_13d.2e68ed54_boundary\r
Content-Type: message/rfc822\r
Content-Disposition: inline\r
\r
""".encode() + head + b"\r\n\r\n" + body + b"\r\n--part1_13d.2e68ed54_boundary--\r\n")


def send_report(port: int, rcpt: str, data: bytes, sender: str = "") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        c.sendmail(sender, [rcpt], data)


@pytest.fixture
async def running(tmp_path: Path):
    up = await Upstream().start()
    port = free_port()
    relay = RelayProcess(tmp_path, CONFIG.format(port=port), upstream_url=f"smtp://127.0.0.1:{up.port}")
    await relay.start()
    try:
        await wait_for(lambda: port_open(port))
        yield relay, up, port
    finally:
        code = await relay.stop()
        await up.stop()
        assert code == 0, relay.output()[-3000:]


async def test_each_copy_has_its_own_return_path_and_a_feedback_id(running) -> None:
    relay, up, _ = running
    reply = await submit(relay.smtp_port, MESSAGE.format(n=1, cset="plain"), sender="news@example.com", rcpts=RCPTS)
    await wait_for(lambda: len(up.messages) == 2)
    senders = {m.rcpts[0]: m.mail_from for m in up.messages}
    assert sorted(senders) == RCPTS and all(len(m.rcpts) == 1 for m in up.messages)  # one transaction each
    assert len(set(senders.values())) == 2
    for verp in senders.values():
        local, _, domain = verp.partition("@")
        assert domain == DOMAIN and local.startswith("b-") and len(local) <= 64
        assert "ana" not in local and "bob" not in local and "news" not in local  # no personal data
    for m in up.messages:
        assert b"\r\nFeedback-ID: plain:relay:relay.test\r\n" in m.data
        assert m.data.count(b"Feedback-ID:") == 1
    # mail.source stays the original envelope sender.
    (_, send), = db_events(relay, "Send")
    assert send["mail"]["source"] == "news@example.com"
    assert reply.split()[1] == send["mail"]["messageId"]


async def test_a_dsn_becomes_a_bounce_for_that_recipient(running) -> None:
    relay, up, port = running
    await submit(relay.smtp_port, MESSAGE.format(n=2, cset="plain"), sender="news@example.com", rcpts=RCPTS)
    await wait_for(lambda: len(up.messages) == 2 and len(db_events(relay, "Delivery")) == 2)
    copy = next(m for m in up.messages if m.rcpts == ["bob@example.org"])
    send_report(port, copy.mail_from, postfix_dsn(copy.mail_from, "bob@example.org", copy.data))
    (rcpt, bounce), = await wait_for(lambda: db_events(relay, "Bounce"))
    assert rcpt == "bob@example.org"
    b = bounce["bounce"]
    assert (b["bounceType"], b["bounceSubType"]) == ("Permanent", "NoEmail")
    assert b["bouncedRecipients"] == [{
        "emailAddress": "bob@example.org", "action": "failed", "status": "5.1.1",
        "diagnosticCode": "smtp; 550 5.1.1 <bob@example.org>: Recipient address rejected: "
                          "User unknown in local recipient table"}]
    assert b["reportingMTA"] == "dns; mx.example.org"
    assert b["feedbackId"] and b["timestamp"].endswith("Z")
    assert bounce["mail"]["source"] == "news@example.com"
    assert bounce["mail"]["messageId"] == db_events(relay, "Send")[0][1]["mail"]["messageId"]
    # A hard bounce puts the address on the suppression list: the next message skips it
    # (OnAccountSuppressionList, no DSN) and still goes to its other recipient.
    (address, reason, mid), = relay.query("SELECT address, reason, message_id FROM suppressed_addresses")
    assert (address, reason, mid) == ("bob@example.org", "BOUNCE", bounce["mail"]["messageId"])
    await submit(relay.smtp_port, MESSAGE.format(n=5, cset="plain"), sender="news@example.com", rcpts=RCPTS)
    await wait_for(lambda: len(db_events(relay, "Bounce")) == 2)
    assert db_events(relay, "Bounce")[1][1]["bounce"]["bounceSubType"] == "OnAccountSuppressionList"
    await wait_for(lambda: len(up.messages) == 3)
    assert up.messages[2].rcpts == ["ana@example.org"]
    # A delay warning for the other copy is not a bounce.
    other = next(m for m in up.messages if m.rcpts == ["ana@example.org"])
    send_report(port, other.mail_from, postfix_dsn(other.mail_from, "ana@example.org", other.data,
                                                   status="4.4.1", action="delayed",
                                                   diagnostic="451 4.4.1 try again later"))
    await asyncio.sleep(0.5)
    assert len(db_events(relay, "Bounce")) == 2
    assert "without a failed recipient" in relay.output()
    assert len(relay.query("SELECT address FROM suppressed_addresses")) == 1


async def test_an_arf_report_becomes_a_complaint(running) -> None:
    relay, up, port = running
    await submit(relay.smtp_port, MESSAGE.format(n=3, cset="news"), sender="news@example.com", rcpts=RCPTS)
    await wait_for(lambda: len(up.messages) == 2)
    copy = next(m for m in up.messages if m.rcpts == ["ana@example.org"])
    # To the feedback-loop address: the returned original's Return-Path names the copy.
    send_report(port, "fbl@example.com", arf(copy.data, rcpt=None, return_path=copy.mail_from))
    (rcpt, complaint), = await wait_for(lambda: db_events(relay, "Complaint"))
    assert rcpt == "ana@example.org"
    c = complaint["complaint"]
    assert c["complainedRecipients"] == [{"emailAddress": "ana@example.org"}]
    assert c["complaintFeedbackType"] == "abuse" and c["userAgent"] == "SomeGenerator/1.0"
    assert c["arrivalDate"] == "2026-11-29T22:01:00.000Z"
    assert c["complaintSubType"] is None and c["feedbackId"]
    # Without a return path (the provider stripped it): the original's Message-ID and
    # Original-Rcpt-To find the message and recipient.
    other = next(m for m in up.messages if m.rcpts == ["bob@example.org"])
    send_report(port, "FBL@example.com", arf(other.data, rcpt="bob@example.org", return_path=None))
    await wait_for(lambda: len(db_events(relay, "Complaint")) == 2)
    assert db_events(relay, "Complaint")[1][0] == "bob@example.org"
    assert sorted(relay.query("SELECT address, reason FROM suppressed_addresses")) == [
        ("ana@example.org", "COMPLAINT"), ("bob@example.org", "COMPLAINT")]


async def test_what_is_not_ours_is_refused_and_what_is_not_a_report_records_nothing(running) -> None:
    relay, up, port = running
    await submit(relay.smtp_port, MESSAGE.format(n=4, cset="plain"), sender="news@example.com", rcpts=RCPTS[:1])
    await wait_for(lambda: len(up.messages) == 1)
    verp = up.messages[0].mail_from
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        c.ehlo("mx.example.org")
        assert c.mail("")[0] == 250
        code, text = c.rcpt("someone@example.org")  # never a relay
        assert code == 550 and b"5.7.1" in text
        local, _, domain = verp.partition("@")
        forged = ("b-" + "a" * (len(local) - 2)) + "@" + domain
        code, text = c.rcpt(forged)
        assert code == 550 and b"5.1.1" in text
        assert c.rcpt(verp)[0] == 250
        # Too big for [feedback] max_message_size.
        code, _ = c.data(b"Subject: x\r\n\r\n" + (b"y" * 98 + b"\r\n") * 2500)
        assert code == 552
    # An auto-reply, broken MIME and plain junk: accepted (250), nothing recorded, no crash.
    send_report(port, verp, b"From: ana@example.org\r\nAuto-Submitted: auto-replied\r\nSubject: Out of office\r\n"
                            b"\r\nI am away until Monday.\r\n")
    send_report(port, verp, b"Content-Type: multipart/report; report-type=delivery-status; boundary=\"x\"\r\n"
                            b"\r\n--x\r\nContent-Type: message/delivery-status\r\n\r\n\x00\xff garbage\r\n--x")
    send_report(port, "fbl@example.com", b"Subject: hello\r\n\r\njust a note\r\n")
    # A report to the feedback address about a message relay never sent.
    send_report(port, "fbl@example.com", arf(b"Message-ID: <unknown@example.com>\r\nSubject: x\r\n\r\nbody",
                                             rcpt="ana@example.org", return_path=None))
    # A genuine token (relay's own key) for a message relay does not have.
    (secret,), = relay.query("SELECT value FROM settings WHERE key = 'token_secret'")
    stray = ReturnPaths([secret.encode()]).address(ReturnPathClaim(new_message_id(), 0), DOMAIN)
    assert stray is not None
    send_report(port, stray, postfix_dsn(stray, "ana@example.org", up.messages[0].data))
    await asyncio.sleep(0.5)
    assert db_events(relay, "Bounce") == [] and db_events(relay, "Complaint") == []
    out = relay.output()
    assert "auto-reply" in out and "matches no message relay sent" in out
    assert port_open(port) and port_open(relay.smtp_port)


async def test_the_listener_has_its_own_connection_limits_and_port_errors_name_the_key(tmp_path: Path) -> None:
    port = free_port()
    body = CONFIG.format(port=port).replace("max_message_size = 200000", "max_connections_per_client = 2")
    (tmp_path / "a").mkdir()
    relay = RelayProcess(tmp_path / "a", body, processes=1)
    await relay.start()
    clients: list[smtplib.SMTP] = []
    try:
        await wait_for(lambda: port_open(port))
        for _ in range(2):
            clients.append(smtplib.SMTP("127.0.0.1", port, timeout=10))
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP("127.0.0.1", port, timeout=10)
        assert refused.value.smtp_code == 421
        # The port is taken (by this relay): a second relay names the key in one line.
        (tmp_path / "b").mkdir()
        other = RelayProcess(tmp_path / "b", body, processes=1)
        with pytest.raises(AssertionError, match="relay exited at start"):
            await other.start()
        assert await other.stop() == 1
        assert "feedback.listen 127.0.0.1:" in other.output()
    finally:
        for c in clients:
            c.close()
        assert await relay.stop() == 0


CORPUS = Path(__file__).parent / "feedback" / "corpus"
SHAPES = {  # recipient -> a DSN as that MTA writes it (tests/feedback/corpus), and its Final-Recipient
    "pf@example.org": ("postfix-user-unknown.eml", "nobody@example.org"),
    "gm@example.org": ("gmail-dsn.eml", "no.such.user.2023@gmail.com"),
    "ex@example.org": ("exim-dsn.eml", "gone@example.co.uk"),
    "ms@example.org": ("office365-ndr.eml", "nobody@contoso.example"),
    "sm@example.org": ("sendmail-dsn.eml", "former.student@example.edu"),
}


class Bouncing(Capture):
    """An upstream that accepts each copy (250) and then mails a real MTA's DSN about it
    to the return path, through relay's feedback listener, as a remote MX would."""

    def __init__(self, feedback_port: int) -> None:
        super().__init__()
        self.feedback_port = feedback_port
        self.tasks: list[asyncio.Task[None]] = []

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        copy = self.messages[-1]
        self.tasks.append(asyncio.create_task(self._bounce(copy.mail_from, copy.rcpts[0])))
        return reply

    async def _bounce(self, verp: str, rcpt: str) -> None:
        name, final = SHAPES[rcpt]
        text = (CORPUS / name).read_text(encoding="utf-8", errors="surrogateescape")
        text = re.sub(r"b-[a-z2-7]{40,}@bounces\.example\.com", verp, text).replace(final, rcpt)
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=self.feedback_port, timeout=10) as c:
            await c.sendmail("", [verp], text.encode("utf-8", "surrogateescape"))  # the null sender


async def test_an_upstream_that_accepts_then_bounces_in_each_mtas_shape(tmp_path: Path) -> None:
    port = free_port()
    handler = Bouncing(port)
    up = await Upstream(handler).start()
    relay = RelayProcess(tmp_path, CONFIG.format(port=port), upstream_url=f"smtp://127.0.0.1:{up.port}")
    await relay.start()
    try:
        await wait_for(lambda: port_open(port))
        rcpts = sorted(SHAPES)
        await submit(relay.smtp_port, MESSAGE.format(n=9, cset="plain"), sender="news@example.com", rcpts=rcpts)
        bounces = await wait_for(lambda: len(db_events(relay, "Bounce")) == len(rcpts) and db_events(relay, "Bounce"))
        await asyncio.gather(*handler.tasks)
        assert sorted(r for r, _ in bounces) == rcpts  # each to the recipient its return path names
        for rcpt, record in bounces:
            b = record["bounce"]
            assert (b["bounceType"], b["bounceSubType"]) == ("Permanent", "NoEmail"), (rcpt, b)
            assert b["bouncedRecipients"][0]["emailAddress"] == rcpt
            assert b["bouncedRecipients"][0]["status"].startswith("5.")
        assert len(db_events(relay, "Delivery")) == len(rcpts)  # the upstream had accepted each copy
        assert sorted(a for a, in relay.query("SELECT address FROM suppressed_addresses")) == rcpts
    finally:
        code = await relay.stop()
        await up.stop()
        assert code == 0
