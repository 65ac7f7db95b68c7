# The log of `relay serve`: one line per SMTP transaction, per delivery outcome and per
# webhook failure, as text or as JSON objects with structured fields; and never a
# password, token, tracking URL or message body, even at DEBUG.
from __future__ import annotations

import base64
import json
import logging
import re
import sys
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest

from relay.logs import JsonFormatter
from tests.support import Capture, RelayProcess, Upstream, free_port, wait_for
from tests.test_serve import submit
from tests.test_tracking import urls_in

PASSWORD = "s3cret-pass-8Q"
HOOK_TOKEN = "hook-token-Zq81"
BODY_MARKER = "BODY-MARKER-7f3a"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
# What relay serve prints on stdout (not log lines); the test captures both streams.
STDOUT_LINES = ("relay: SMTP listening on ", "relay: stopped")


def test_json_formatter_fields_and_exception() -> None:
    record = logging.LogRecord("relay.delivery", logging.INFO, __file__, 1, "delivered %s to %s", ("m1", "a@b"),
                               None)
    record.message_id, record.recipient = "m1", "a@b"  # as extra= sets them
    doc = json.loads(JsonFormatter().format(record))
    assert doc.pop("time").endswith("Z")
    assert doc == {"level": "INFO", "logger": "relay.delivery", "message": "delivered m1 to a@b",
                   "message_id": "m1", "recipient": "a@b"}
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        failed = logging.LogRecord("relay", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = JsonFormatter().format(failed)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exception"]


def tracked_message(subject: str, cset: str = "news") -> bytes:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "news@example.com", "list@example.org", subject
    m["X-SES-CONFIGURATION-SET"] = cset
    m.set_content(f"{BODY_MARKER} https://shop.example.com/spring?a=1")
    m.add_alternative(f'<html><body><p>{BODY_MARKER}</p><a href="https://shop.example.com/spring?a=1">Shop</a>'
                      "</body></html>", subtype="html")
    return m.as_bytes()


def log_records(relay: RelayProcess) -> list[dict[str, Any]]:
    out = []
    for line in relay.output().splitlines():
        if line.startswith(STDOUT_LINES):
            continue
        doc = json.loads(line)  # every log line is one JSON object
        assert {"time", "level", "logger", "message"} <= doc.keys(), doc
        assert ISO.match(doc["time"]), doc["time"]
        out.append(doc)
    return out


def find(docs: list[dict[str, Any]], **fields: Any) -> list[dict[str, Any]]:
    return [d for d in docs if all(d.get(k) == v for k, v in fields.items())]


async def test_json_log_has_every_outcome_and_no_secret(tmp_path: Path) -> None:
    capture = Capture(data_replies=["451 4.3.0 try later"],
                      rcpt_replies={"nobody@example.org": "550 5.1.1 user unknown"})
    up = await Upstream(capture).start()
    hook_port = free_port()  # nothing listens: every webhook attempt fails
    relay = RelayProcess(tmp_path, f"""
[configuration_sets.news]
[[configuration_sets.news.event_destinations]]
name = "db"
type = "sqlite"
matching_event_types = ["send", "delivery", "bounce", "deliveryDelay", "open", "click"]
[[configuration_sets.news.event_destinations]]
name = "hook"
type = "webhook"
url = "http://127.0.0.1:{hook_port}/events?token={HOOK_TOKEN}"
secret = "webhook-signing-secret"
matching_event_types = ["send"]
""", upstream_url=f"smtp://127.0.0.1:{up.port}", serve_args=("--log-format", "json", "--log-level", "DEBUG"))
    relay.config_path.write_text(relay.config_path.read_text().replace(
        'hostname = "relay.test"\n', 'hostname = "relay.test"\nauth_required = true\nmax_message_size = 8192\n'
        f'[smtp.users]\napp = "{PASSWORD}"\n', 1))
    try:
        await relay.start()
        rcpts = ["slow@example.org", "ana@example.org", "nobody@example.org"]  # the first DATA gets 451
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.smtp_port, timeout=20) as s:
            with pytest.raises(aiosmtplib.SMTPSenderRefused):  # 530 before AUTH
                await s.sendmail("news@example.com", rcpts, tracked_message("no auth"))
            await s.login("app", PASSWORD)
            _, reply = await s.sendmail("news@example.com", rcpts, tracked_message("Spring"))
            with pytest.raises(aiosmtplib.SMTPDataError):  # 554 unknown configuration set
                await s.sendmail("news@example.com", rcpts, tracked_message("x", cset="nosuchset"))
            with pytest.raises(aiosmtplib.SMTPResponseException):  # 552 too big: SIZE= at MAIL
                await s.sendmail("news@example.com", rcpts, tracked_message("x" * 9000))
            await s.mail("news@example.com")  # no SIZE=: 552 after the data
            await s.rcpt("ana@example.org")
            with pytest.raises(aiosmtplib.SMTPDataError):
                await s.data(tracked_message("x" * 9000))
        message_id = reply.split()[1]
        copies = await wait_for(lambda: [m for m in up.messages if m.rcpts == ["ana@example.org"]])
        pixels, links = urls_in(copies[0].data)
        async with aiohttp.ClientSession() as http:
            for url in (pixels[0], links[0]):
                async with http.get(url, allow_redirects=False) as r:
                    assert r.status in (200, 302)
        await wait_for(lambda: relay.query("SELECT count(*) FROM events WHERE event_type IN ('Open', 'Click')")
                       == [(2,)])
        await wait_for(lambda: relay.query("SELECT count(*) FROM recipients WHERE message_id = ? AND "
                                           "state = 'pending'", (message_id,)) == [(0,)])
        await wait_for(lambda: "webhook news/hook" in relay.output())
        secret = relay.query("SELECT value FROM settings WHERE key = 'token_secret'")[0][0]
    finally:
        await relay.stop()
        await up.stop()

    docs = log_records(relay)
    [accepted] = find(docs, outcome="accepted")
    assert accepted["message_id"] == message_id and accepted["sender"] == "news@example.com"
    assert accepted["recipients"] == 3 and accepted["configuration_set"] == "news"
    assert accepted["logger"] == "relay.smtp" and accepted["message"].startswith(f"accepted {message_id} from ")
    refused = find(docs, outcome="refused")
    assert sorted(d["reply"][:3] for d in refused) == ["530", "552", "552", "554"]
    [after_data] = [d for d in refused if d.get("recipients") == 1]
    assert after_data["reply"].startswith("552 5.3.4") and after_data["sender"] == "news@example.com"
    assert all(d["peer"] == "127.0.0.1" for d in refused)

    mine = find(docs, message_id=message_id)
    [deferred] = find(mine, outcome="deferred")
    assert deferred["recipient"] == "slow@example.org" and deferred["reply"] == "451 4.3.0 try later"
    assert ISO.match(deferred["next_attempt"]) and deferred["next_attempt"] in deferred["message"]
    delivered = find(mine, outcome="delivered")
    assert sorted(d["recipient"] for d in delivered) == ["ana@example.org", "slow@example.org"]
    assert all(d["reply"].startswith("250 ") and d["logger"] == "relay.delivery" for d in delivered)
    [bounced] = find(mine, outcome="bounced")
    assert bounced["recipient"] == "nobody@example.org" and "550 5.1.1 user unknown" in bounced["reply"]
    hook = find(docs, destination="news/hook")
    assert hook and all(d["outcome"] == "retry" and d["event_id"] and d["level"] == "WARNING" for d in hook)

    log = relay.output()
    for never in (PASSWORD, base64.b64encode(f"\0app\0{PASSWORD}".encode()).decode(),
                  base64.b64encode(PASSWORD.encode()).decode(), secret, "webhook-signing-secret", HOOK_TOKEN,
                  "/c/", "/o/", BODY_MARKER, "shop.example.com"):
        assert never not in log, never


async def test_unreachable_upstream_one_line_per_attempt(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path, "", upstream_url=f"smtp://127.0.0.1:{free_port()}")
    try:
        await relay.start()
        # No configuration set: one transaction for all three recipients, so one attempt.
        await submit(relay.smtp_port, "From: a@example.com\r\nSubject: x\r\n\r\nhi\r\n",
                     rcpts=["b@example.org", "c@example.org", "d@example.org"])
        await wait_for(lambda: relay.output().count("upstream unreachable") >= 2)
    finally:
        await relay.stop()
    attempts = {n for (n,) in relay.query("SELECT attempts FROM recipients")}
    assert len(attempts) == 1  # the three share every attempt
    lines = [x for x in relay.output().splitlines() if "upstream unreachable" in x]
    assert len(lines) == attempts.pop()
    assert all(" WARNING relay.delivery: " in x and ", 3 recipient(s) deferred: upstream smtp://127.0.0.1:" in x
               and "; next attempt at 20" in x for x in lines)
    assert " deferred " not in relay.output().replace("recipient(s) deferred", "")
