# End to end through `relay serve`: the account suppression list (a hard bounce adds the
# address, the next message skips it with a Bounce while its other recipients are
# delivered), the `relay suppression` commands, and one-click unsubscribe over HTTP.
from __future__ import annotations

import base64
import email
import json
import re
from email import policy
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from tests.support import Capture, RelayProcess, Upstream, wait_for
from tests.test_cli import cli, cli_json
from tests.test_serve import submit

TYPES = '["send", "delivery", "bounce", "subscription"]'
CONFIG = f"""
[configuration_sets.news]
[[configuration_sets.news.event_destinations]]
name = "db"
type = "sqlite"
matching_event_types = {TYPES}
[configuration_sets.quiet]
suppressed_reasons = []
[[configuration_sets.quiet.event_destinations]]
name = "db"
type = "sqlite"
matching_event_types = {TYPES}
[configuration_sets.listed]
list_unsubscribe = true
[[configuration_sets.listed.event_destinations]]
name = "db"
type = "sqlite"
matching_event_types = {TYPES}
[configuration_sets.tracked]
[[configuration_sets.tracked.event_destinations]]
name = "db"
type = "sqlite"
matching_event_types = ["send", "delivery", "open", "click", "subscription"]
"""
GONE = "gone@example.org"  # the upstream answers 550 5.1.1 for it
SUPPRESSED_REPLY = re.compile(r"smtp; 550 5\.1\.1 <([^>]+)>: on the account suppression list \(BOUNCE since "
                              r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)")


def message(cset: str, subject: str, *, extra: str = "", body: str = "Hello\r\n") -> str:
    return (f"From: ana@example.com\r\nTo: list@example.org\r\nSubject: {subject}\r\n"
            f"X-SES-CONFIGURATION-SET: {cset}\r\n{extra}\r\n{body}")


def events(relay: RelayProcess, event_type: str) -> list[dict[str, Any]]:
    rows = relay.query("SELECT body FROM events WHERE event_type = ? ORDER BY seq", (event_type,))
    return [json.loads(b) for (b,) in rows]


def bounces(relay: RelayProcess, message_id: str) -> dict[str, dict[str, Any]]:
    return {e["bounce"]["bouncedRecipients"][0]["emailAddress"]: e for e in events(relay, "Bounce")
            if e["mail"]["messageId"] == message_id}


def states(relay: RelayProcess, message_id: str) -> dict[str, str]:
    return dict(relay.query("SELECT recipient, state FROM recipients WHERE message_id = ?", (message_id,)))


async def finished(relay: RelayProcess, message_id: str) -> dict[str, str]:
    return await wait_for(lambda: (s := states(relay, message_id)) and "pending" not in s.values() and s)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = await Upstream(Capture(rcpt_replies={GONE: "550 5.1.1 <gone@example.org>: user unknown"})).start()
    yield up
    await up.stop()


@pytest.fixture
async def relay(tmp_path: Path, upstream: Upstream) -> AsyncIterator[RelayProcess]:
    r = RelayProcess(tmp_path, CONFIG, upstream_url=f"smtp://127.0.0.1:{upstream.port}", processes=1)
    await r.start()
    yield r
    await r.stop()


def sent_to(upstream: Upstream, subject: str) -> list[str]:
    # Not the DSNs (null sender), which quote the subject.
    return sorted(r for m in upstream.messages if f"Subject: {subject}".encode() in m.data
                  and m.mail_from not in ("", "<>") for r in m.rcpts)


async def test_hard_bounce_suppresses_and_the_next_message_skips_only_that_recipient(
        relay: RelayProcess, upstream: Upstream) -> None:
    first = (await submit(relay.smtp_port, message("news", "one"), rcpts=[GONE, "ok@example.org"])).split()[-1]
    assert await finished(relay, first) == {GONE: "bounced", "ok@example.org": "delivered"}
    [(address, reason, message_id)] = relay.query("SELECT address, reason, message_id FROM suppressed_addresses")
    assert (address, reason, message_id) == (GONE, "BOUNCE", first)
    assert bounces(relay, first)[GONE]["bounce"]["bounceSubType"] == "NoEmail"  # the upstream's own bounce
    dsns_before = len([m for m in upstream.messages if m.rcpts == ["ana@example.com"]])

    # The next message: GONE (in another case) is not even offered to the upstream.
    second = (await submit(relay.smtp_port, message("news", "two"),
                           rcpts=["Gone@Example.org", "ok@example.org"])).split()[-1]
    assert await finished(relay, second) == {"Gone@Example.org": "bounced", "ok@example.org": "delivered"}
    assert sent_to(upstream, "two") == ["ok@example.org"]
    bounce = bounces(relay, second)["Gone@Example.org"]["bounce"]
    assert (bounce["bounceType"], bounce["bounceSubType"]) == ("Permanent", "OnAccountSuppressionList")
    [recipient] = bounce["bouncedRecipients"]
    assert recipient["status"] == "5.1.1" and recipient["action"] == "failed"
    assert SUPPRESSED_REPLY.fullmatch(recipient["diagnosticCode"]).group(1) == "Gone@Example.org"
    assert bounce["reportingMTA"] == "dns; relay.test" and bounce["feedbackId"] and bounce["timestamp"]
    # The event is the report: no DSN to the sender for a refusal (as SES), and the
    # refusal does not touch the entry that caused it.
    assert len([m for m in upstream.messages if m.rcpts == ["ana@example.com"]]) == dsns_before
    assert relay.query("SELECT message_id FROM suppressed_addresses") == [(first,)]


async def test_a_set_without_suppressed_reasons_still_sends(relay: RelayProcess, upstream: Upstream) -> None:
    assert (await cli(relay, "suppression", "add", "kept@example.org", "--reason", "COMPLAINT"))[0] == 0
    mid = (await submit(relay.smtp_port, message("quiet", "quiet"), rcpts=["kept@example.org", GONE])).split()[-1]
    assert await finished(relay, mid) == {"kept@example.org": "delivered", GONE: "bounced"}
    assert sent_to(upstream, "quiet") == ["kept@example.org"]
    # suppressed_reasons = []: the upstream's hard bounce does not add GONE either.
    assert relay.query("SELECT address FROM suppressed_addresses") == [("kept@example.org",)]
    # The same address in a set suppressing both reasons: refused.
    mid = (await submit(relay.smtp_port, message("news", "news"), rcpts=["kept@example.org"])).split()[-1]
    assert await finished(relay, mid) == {"kept@example.org": "bounced"}
    assert "COMPLAINT since" in bounces(relay, mid)["kept@example.org"]["bounce"]["bouncedRecipients"][0]["diagnosticCode"]


async def test_suppression_commands(relay: RelayProcess, tmp_path: Path) -> None:
    assert await cli_json(relay, "suppression", "list", "--json") == []
    code, out, err = await cli(relay, "suppression", "add", "Ana@Example.com", "--reason", "bounce")
    assert (code, out, err) == (0, "ana@example.com: suppressed (BOUNCE)\n", "")
    [entry] = await cli_json(relay, "suppression", "list", "--json")
    assert entry["emailAddress"] == "ana@example.com" and entry["reason"] == "BOUNCE"
    assert entry["messageId"] is None and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry["lastUpdateTime"])
    code, out, _ = await cli(relay, "suppression", "list")
    assert code == 0 and "ana@example.com" in out and "BOUNCE" in out

    good = tmp_path / "good.csv"
    good.write_text("emailAddress,reason\nbob@example.org,COMPLAINT\nana@example.com,COMPLAINT\n")
    assert (await cli(relay, "suppression", "import", str(good)))[:2] == (0, f"2 address(es) imported from {good}\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("emailAddress,reason\ncarl@example.org,BOUNCE\nnope,BOUNCE\ndave@example.org,SPAM\n")
    code, out, err = await cli(relay, "suppression", "import", str(bad))
    assert code == 2 and out == ""
    assert f"{bad}:3: not an email address" in err and f"{bad}:4: reason must be BOUNCE or COMPLAINT" in err
    assert "nothing imported" in err
    exported = tmp_path / "out.csv"
    assert (await cli(relay, "suppression", "export", str(exported)))[0] == 0
    assert exported.read_text() == "emailAddress,reason\nana@example.com,COMPLAINT\nbob@example.org,COMPLAINT\n"
    code, out, _ = await cli(relay, "suppression", "export")
    assert code == 0 and out == exported.read_text()

    assert (await cli(relay, "suppression", "remove", "BOB@example.org"))[0] == 0
    code, _, err = await cli(relay, "suppression", "remove", "bob@example.org")
    assert code == 1 and "not on the suppression list" in err
    code, _, err = await cli(relay, "suppression", "add", "not an address", "--reason", "BOUNCE")
    assert code == 2 and "expected an email address" in err
    code, _, err = await cli(relay, "suppression", "add", "x@example.com", "--reason", "SPAM")
    assert code == 2 and "--reason" in err
    assert [e["emailAddress"] for e in await cli_json(relay, "suppression", "list", "--json")] == ["ana@example.com"]


HTML_QP = ('<p>Weekly news. ' + "x" * 50 + ' <a href="{{amazonSESUnsubscribeUrl}}">Unsubscribe</a></p>')
TEXT_B64 = "Weekly news.\nUnsubscribe: {{amazonSESUnsubscribeUrl}}\n"


def weekly(cset: str, subject: str, options: str | None) -> str:
    qp = HTML_QP.replace("=", "=3D")
    qp = qp[:70] + "=\r\n" + qp[70:]  # a soft break inside the placeholder's line
    b64 = base64.encodebytes(TEXT_B64.encode()).decode().replace("\n", "\r\n")
    extra = f"X-SES-LIST-MANAGEMENT-OPTIONS: {options}\r\n" if options else ""
    return message(cset, subject, extra=extra + "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=B\r\n",
                   body=("--B\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                         f"{b64}--B\r\nContent-Type: text/html; charset=utf-8\r\n"
                         f"Content-Transfer-Encoding: quoted-printable\r\n\r\n{qp}\r\n--B--\r\n"))


def copy_of(upstream: Upstream, subject: str, rcpt: str) -> email.message.EmailMessage:
    [m] = [m for m in upstream.messages if f"Subject: {subject}".encode() in m.data and m.rcpts == [rcpt]]
    return email.message_from_bytes(m.data, policy=policy.default)  # type: ignore[return-value]


async def test_one_click_unsubscribe(relay: RelayProcess, upstream: Upstream) -> None:
    rcpts = ["ann@example.org", "ben@example.org"]
    mid = (await submit(relay.smtp_port, weekly("news", "w1", "news; topic=weekly"), rcpts=rcpts)).split()[-1]
    assert await finished(relay, mid) == dict.fromkeys(rcpts, "delivered")
    urls = {}
    for rcpt in rcpts:  # one copy each, with its own link in the header and both parts
        copy = copy_of(upstream, "w1", rcpt)
        assert "X-SES-LIST-MANAGEMENT-OPTIONS" not in copy
        url = re.fullmatch(rf"<(http://127\.0\.0\.1:{relay.http_port}/u/[A-Za-z0-9_-]+)>", copy["List-Unsubscribe"]).group(1)
        assert copy["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        text, html = (p.get_content() for p in copy.iter_parts())
        assert text == TEXT_B64.replace("{{amazonSESUnsubscribeUrl}}", url)
        assert html.strip() == HTML_QP.replace("{{amazonSESUnsubscribeUrl}}", url)
        urls[rcpt] = url
    assert urls["ann@example.org"] != urls["ben@example.org"]
    ann = urls["ann@example.org"]

    async with aiohttp.ClientSession() as http:
        # GET: a page with a button, nothing changes (a link scanner may fetch it).
        async with http.get(ann) as r:
            assert r.status == 200 and "<form method=\"post\">" in await r.text()
            assert "contact list news, topic weekly" in await r.text()
        assert relay.query("SELECT * FROM contacts") == [] and events(relay, "Subscription") == []
        # Forged: another token's characters changed, or none at all.
        forged = ann[:-3] + ("AAA" if not ann.endswith("AAA") else "BBB")
        for url in (forged, f"http://127.0.0.1:{relay.http_port}/u/x"):
            async with http.post(url, data={"List-Unsubscribe": "One-Click"}) as r:
                assert r.status == 404
        assert relay.query("SELECT * FROM contacts") == []
        # The mailbox provider's one-click POST (RFC 8058 §3.2).
        async with http.post(ann, data={"List-Unsubscribe": "One-Click"}) as r:
            assert r.status == 200 and "You are unsubscribed" in await r.text()
        [event] = events(relay, "Subscription")
        assert event["mail"]["messageId"] == mid
        sub = event["subscription"]
        assert sub["contactList"] == "news" and sub["source"] == "UnsubscribeHeader"
        assert sub["recipient"] == "ann@example.org"
        assert sub["oldTopicPreferences"] == {"unsubscribeAll": False, "topicSubscriptionStatus": [
            {"topicName": "weekly", "subscriptionStatus": "OptIn"}]}
        assert sub["newTopicPreferences"] == {"unsubscribeAll": False, "topicSubscriptionStatus": [
            {"topicName": "weekly", "subscriptionStatus": "OptOut"}]}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", sub["timestamp"])
        # Again (the page's button this time): nothing changes, no second event.
        async with http.post(ann, data={"confirm": "page"}) as r:
            assert r.status == 200 and "already unsubscribed" in await r.text()
        assert len(events(relay, "Subscription")) == 1

    # The next message to the list's topic skips ann (and says why); ben still gets it.
    mid2 = (await submit(relay.smtp_port, weekly("news", "w2", "news; topic=weekly"), rcpts=rcpts)).split()[-1]
    assert await finished(relay, mid2) == {"ann@example.org": "bounced", "ben@example.org": "delivered"}
    assert sent_to(upstream, "w2") == ["ben@example.org"]
    bounce = bounces(relay, mid2)["ann@example.org"]["bounce"]
    assert (bounce["bounceType"], bounce["bounceSubType"]) == ("Permanent", "UnsubscribedRecipient")
    assert "unsubscribed from contact list news, topic weekly" in bounce["bouncedRecipients"][0]["diagnosticCode"]
    # Another topic of that list, and another list, still reach her; an unsubscribe
    # is not a suppression.
    mid3 = (await submit(relay.smtp_port, weekly("news", "w3", "news; topic=offers"), rcpts=rcpts[:1])).split()[-1]
    mid4 = (await submit(relay.smtp_port, weekly("news", "w4", "other"), rcpts=rcpts[:1])).split()[-1]
    assert await finished(relay, mid3) == {"ann@example.org": "delivered"}
    assert await finished(relay, mid4) == {"ann@example.org": "delivered"}
    assert relay.query("SELECT * FROM suppressed_addresses") == []


async def test_set_level_list_unsubscribe_and_the_page_button(relay: RelayProcess, upstream: Upstream) -> None:
    mid = (await submit(relay.smtp_port, message("listed", "l1"), rcpts=["cid@example.org"])).split()[-1]
    assert await finished(relay, mid) == {"cid@example.org": "delivered"}
    copy = copy_of(upstream, "l1", "cid@example.org")
    url = copy["List-Unsubscribe"].strip("<>")
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as r:
            assert r.status == 200 and "contact list listed" in await r.text()
        async with http.post(url, data={"confirm": "page"}) as r:  # the page's button
            assert r.status == 200
    [event] = events(relay, "Subscription")
    sub = event["subscription"]
    assert (sub["contactList"], sub["source"]) == ("listed", "UnsubscribeLink")
    assert sub["newTopicPreferences"] == {"unsubscribeAll": True, "topicSubscriptionStatus": []}
    assert sub["oldTopicPreferences"] == {"unsubscribeAll": False, "topicSubscriptionStatus": []}
    mid = (await submit(relay.smtp_port, message("listed", "l2"), rcpts=["cid@example.org"])).split()[-1]
    assert await finished(relay, mid) == {"cid@example.org": "bounced"}
    assert bounces(relay, mid)["cid@example.org"]["bounce"]["bounceSubType"] == "UnsubscribedRecipient"


async def test_bad_list_management_options_are_refused(relay: RelayProcess) -> None:
    import aiosmtplib

    with pytest.raises(aiosmtplib.SMTPDataError) as e:
        await submit(relay.smtp_port, message("news", "bad", extra="X-SES-LIST-MANAGEMENT-OPTIONS: news; weekly\r\n"))
    assert e.value.code == 554 and "Invalid X-SES-LIST-MANAGEMENT-OPTIONS" in e.value.message
    assert relay.query("SELECT COUNT(*) FROM messages") == [(0,)]


async def test_a_tracked_message_keeps_its_unsubscribe_link_untracked(relay: RelayProcess, upstream: Upstream) -> None:
    html = ('<p><a href="https://example.com/shop">Shop</a> '
            '<a href="{{amazonSESUnsubscribeUrl}}">Unsubscribe</a></p>')
    body = ("--B\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
            f"{html.replace('=', '=3D')}\r\n--B--\r\n")
    extra = ("X-SES-LIST-MANAGEMENT-OPTIONS: news\r\nMIME-Version: 1.0\r\n"
             "Content-Type: multipart/alternative; boundary=B\r\n")
    mid = (await submit(relay.smtp_port, message("tracked", "t1", extra=extra, body=body),
                        rcpts=["dee@example.org"])).split()[-1]
    assert await finished(relay, mid) == {"dee@example.org": "delivered"}
    copy = copy_of(upstream, "t1", "dee@example.org")
    url = copy["List-Unsubscribe"].strip("<>")
    [part] = copy.iter_parts()
    content = part.get_content()
    assert f'<a href="{url}">Unsubscribe</a>' in content  # the same link, not a click redirect
    assert f"127.0.0.1:{relay.http_port}/c/" in content and "/o/" in content  # the rest is tracked
    # RFC 8058 §3.2 allows the one-click body as multipart/form-data too.
    async with aiohttp.ClientSession() as http:
        form = aiohttp.FormData({"List-Unsubscribe": "One-Click"}, default_to_multipart=True)
        async with http.post(url, data=form) as r:
            assert r.status == 200
    [event] = events(relay, "Subscription")
    assert event["subscription"]["source"] == "UnsubscribeHeader"
    assert event["subscription"]["newTopicPreferences"]["unsubscribeAll"] is True
