# The read-side commands against a real `relay serve` that really delivered and tracked
# known traffic: several configuration sets (one with only a webhook destination), mail
# without a set, message tags, a 5xx recipient, a 4xx-then-2xx recipient, repeated
# opens and clicks over HTTP. The CLI runs as a subprocess while relay serve runs.
from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from relay.events.records import iso
from tests.support import Capture, RelayProcess, Upstream, free_port, port_open, wait_for
from tests.test_serve import submit
from tests.test_tracking import urls_in

SPRING = "https://shop.example.com/spring?a=1"
ABOUT = "https://example.com/about"
AUTUMN = "https://shop.example.com/autumn"
# One relay and its traffic for the whole module (the tests only read): one event loop too,
# since the capture upstream and the webhook receiver run in it.
pytestmark = pytest.mark.asyncio(loop_scope="module")
M1_RCPTS = ["slow@example.org", "ana@example.org", "bob@example.org", "bad@example.org"]


def config(hook_port: int, admin_port: int) -> str:
    return f"""
[admin]
listen = "127.0.0.1:{admin_port}"
[configuration_sets.news]
[[configuration_sets.news.event_destinations]]
name = "db"
type = "sqlite"
matching_event_types = ["send", "delivery", "bounce", "deliveryDelay", "open", "click"]
[configuration_sets.hooked]
[[configuration_sets.hooked.event_destinations]]
name = "hook"
type = "webhook"
url = "http://127.0.0.1:{hook_port}/events"
matching_event_types = ["send", "delivery", "open", "click"]
[configuration_sets.plain]
[[configuration_sets.plain.event_destinations]]
name = "jsonl"
type = "file"
path = "plain.jsonl"
matching_event_types = ["send", "delivery"]
"""


def message(subject: str, cset: str | None, tags: str | None, links: list[tuple[str, str]]) -> bytes:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "news@example.com", "list@example.org", subject
    if cset:
        m["X-SES-CONFIGURATION-SET"] = cset
    if tags:
        m["X-SES-MESSAGE-TAGS"] = tags
    m.set_content("Hello")
    anchors = "".join(f'<a href="{url}" ses:tags="{link_tags}">x</a>' for url, link_tags in links)
    m.add_alternative(f"<html><body>{anchors}</body></html>", subtype="html")
    return m.as_bytes()


async def cli(relay: RelayProcess, *args: str) -> tuple[int, str, str]:
    """`python -m relay.cli ARGS --config …`, without blocking the loop the upstream runs in."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.cli", *args, "--config", str(relay.config_path), cwd=relay.tmp,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def cli_json(relay: RelayProcess, *args: str) -> Any:
    code, out, err = await cli(relay, *args)
    assert code == 0 and err == "", err
    return json.loads(out)


class Receiver:
    """A webhook endpoint on loopback that keeps what it is sent."""

    def __init__(self) -> None:
        self.port = free_port()
        self.events: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None

    async def start(self) -> Receiver:
        async def hook(request: web.Request) -> web.Response:
            self.events.append(json.loads(await request.read()))
            return web.Response(status=204)
        app = web.Application()
        app.router.add_post("/events", hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class World:
    def __init__(self, relay: RelayProcess, up: Upstream, receiver: Receiver, ids: dict[str, str],
                 since: datetime, until: datetime, admin: str) -> None:
        self.relay, self.up, self.receiver, self.ids, self.admin = relay, up, receiver, ids, admin
        self.period = ("--since", iso(since), "--until", iso(until))
        self.since, self.until = iso(since), iso(until)


def hits(relay: RelayProcess) -> int:
    return relay.query("SELECT count(*) FROM event_log WHERE event_type IN ('Open', 'Click')")[0][0]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    tmp = tmp_path_factory.mktemp("cli")
    start = datetime.now(UTC)
    # The first DATA (slow@, the first copy of the first message) is deferred once;
    # bad@ is refused at RCPT.
    up = await Upstream(Capture(data_replies=["451 4.3.0 try later"],
                                rcpt_replies={"bad@example.org": "550 5.1.1 user unknown"})).start()
    receiver = await Receiver().start()
    admin_port = free_port()
    relay = RelayProcess(tmp, config(receiver.port, admin_port), upstream_url=f"smtp://127.0.0.1:{up.port}")
    try:
        await relay.start()
        await wait_for(lambda: port_open(admin_port), 20)
        ids: dict[str, str] = {}
        ids["m1"] = (await submit(relay.smtp_port, message("Spring sale", "news", "campaign=spring", [
            (SPRING, "product:shoes;"), (ABOUT, "")]), sender="news@example.com", rcpts=M1_RCPTS)).split()[1]
        # Everything of m1 is final (slow@ after its retry) before the rest is sent.
        await wait_for(lambda: relay.query("SELECT count(*) FROM recipients WHERE message_id = ? AND "
                                           "state = 'pending'", (ids["m1"],)) == [(0,)], 20)
        ids["m2"] = (await submit(relay.smtp_port, message("Autumn", "hooked", "campaign=autumn", [
            (AUTUMN, "product:coats;")]), sender="news@example.com",
            rcpts=["cy@example.org", "dee@example.org"])).split()[1]
        ids["m3"] = (await submit(relay.smtp_port, message("Plain", "plain", None, []), sender="news@example.com",
                                  rcpts=["eve@example.org"])).split()[1]
        ids["m4"] = (await submit(relay.smtp_port, message("No set", None, None, []), sender="news@example.com",
                                  rcpts=["fay@example.org", "gus@example.org"])).split()[1]
        await wait_for(lambda: relay.query("SELECT count(*) FROM recipients WHERE state = 'pending'") == [(0,)])
        await wait_for(lambda: relay.query("SELECT count(*) FROM event_log WHERE event_type = 'Delivery'")[0][0] >= 9)

        def copy(rcpt: str) -> tuple[list[str], list[str]]:
            [m] = [m for m in up.messages if m.rcpts == [rcpt]]
            return urls_in(m.data)

        def link(rcpt: str, word: str) -> str:
            return next(u for u in copy(rcpt)[1] if word in u)

        # One at a time, each recorded before the next, so their order is known.
        plan = [(copy("ana@example.org")[0][0], "Reader/1"), (copy("ana@example.org")[0][0], "Reader/2"),
                (link("ana@example.org", "spring"), "Reader/1"), (link("ana@example.org", "spring"), "Reader/1"),
                (link("ana@example.org", "about"), "Reader/1"), (copy("bob@example.org")[0][0], "Bob/1"),
                (link("slow@example.org", "spring"), "Slow/1"), (copy("cy@example.org")[0][0], "Cy/1"),
                (link("cy@example.org", "autumn"), "Cy/1")]
        async with aiohttp.ClientSession() as http:
            for n, (url, agent) in enumerate(plan, 1):
                async with http.get(url, headers={"User-Agent": agent}, allow_redirects=False) as r:
                    assert r.status in (200, 302)
                await wait_for(lambda n=n: hits(relay) == n)  # type: ignore[misc]
        await wait_for(lambda: len(receiver.events) == 5)  # m2: Send, 2 Delivery, Open, Click
        yield World(relay, up, receiver, ids, start.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1),
                    datetime.now(UTC) + timedelta(hours=1), f"http://127.0.0.1:{admin_port}")
    finally:
        await relay.stop()
        await receiver.stop()
        await up.stop()


def when(record: dict[str, Any]) -> str:
    """An SES record's time: its per-type object's timestamp, else the mail's (Send has none)."""
    child = next((v for k, v in record.items() if k not in ("eventType", "mail")), {})
    return str(child.get("timestamp") or record["mail"]["timestamp"])


def zero_counts(**counts: int) -> dict[str, int]:
    base = {k: 0 for k in ("send", "reject", "bounce", "complaint", "delivery", "open", "click",
                           "renderingFailure", "deliveryDelay", "subscription")}
    return {**base, **counts}


def everything(world: World) -> dict[str, Any]:
    """The stats document of the whole traffic, every set."""
    return {
        "since": world.since,
        "until": world.until,
        "configuration_set": None,
        "counts": {"send": 4, "reject": 0, "bounce": 1, "complaint": 0, "delivery": 8, "open": 4, "click": 5,
                   "renderingFailure": 0, "deliveryDelay": 1, "subscription": 0},
        "recipients": 9,  # 4 + 2 + 1 + 2; relay's DSN to news@ is not mail the application sent
        "unique": {"open": 3, "click": 3},  # (m1, ana), (m1, bob), (m2, cy); (m1, ana), (m1, slow), (m2, cy)
        "rates": {"delivery": 8 / 9, "bounce": 1 / 9, "complaint": 0.0,
                  "open": 3 / 5, "click": 3 / 5},  # 5 delivered recipients of tracked mail (m1: 3, m2: 2)
        "top_links": [{"link": SPRING, "clicks": 3, "unique_clicks": 2},
                      {"link": ABOUT, "clicks": 1, "unique_clicks": 1},
                      {"link": AUTUMN, "clicks": 1, "unique_clicks": 1}],
        "link_tags": [{"name": "product", "value": "shoes", "clicks": 3},
                      {"name": "product", "value": "coats", "clicks": 1}],
    }


async def test_stats_json_is_exactly_the_traffic(world: World) -> None:
    assert await cli_json(world.relay, "stats", "--json", *world.period) == everything(world)


async def test_stats_per_set_no_set_and_tag(world: World) -> None:
    def expected(cset: str | None, counts: dict[str, int], recipients: int, unique: tuple[int, int],
                 rates: tuple[Any, ...], top_links: list[Any], link_tags: list[Any]) -> dict[str, Any]:
        return {"since": world.since, "until": world.until, "configuration_set": cset, "counts": zero_counts(**counts),
                "recipients": recipients, "unique": {"open": unique[0], "click": unique[1]},
                "rates": dict(zip(("delivery", "bounce", "complaint", "open", "click"), rates, strict=True)),
                "top_links": top_links, "link_tags": link_tags}

    news = expected("news", {"send": 1, "delivery": 3, "bounce": 1, "deliveryDelay": 1, "open": 3, "click": 4}, 4,
                    (2, 2), (3 / 4, 1 / 4, 0.0, 2 / 3, 2 / 3),
                    [{"link": SPRING, "clicks": 3, "unique_clicks": 2}, {"link": ABOUT, "clicks": 1, "unique_clicks": 1}],
                    [{"name": "product", "value": "shoes", "clicks": 3}])
    assert await cli_json(world.relay, "stats", "--json", "--configuration-set", "news", *world.period) == news
    hooked = expected("hooked", {"send": 1, "delivery": 2, "open": 1, "click": 1}, 2, (1, 1),
                      (1.0, 0.0, 0.0, 0.5, 0.5), [{"link": AUTUMN, "clicks": 1, "unique_clicks": 1}],
                      [{"name": "product", "value": "coats", "clicks": 1}])
    assert await cli_json(world.relay, "stats", "--json", "--configuration-set", "hooked", *world.period) == hooked
    assert await cli_json(world.relay, "stats", "--json", "--configuration-set", "plain", *world.period) == expected(
        "plain", {"send": 1, "delivery": 1}, 1, (0, 0), (1.0, 0.0, 0.0, None, None), [], [])
    assert await cli_json(world.relay, "stats", "--json", "--configuration-set", "", *world.period) == expected(
        "", {"send": 1, "delivery": 2}, 2, (0, 0), (1.0, 0.0, 0.0, None, None), [], [])
    # A message tag keeps that campaign's messages: m1 only, or m2 only.
    spring = await cli_json(world.relay, "stats", "--json", "--tag", "campaign=spring", *world.period)
    assert spring == {**news, "configuration_set": None}
    autumn = await cli_json(world.relay, "stats", "--json", "--tag", "campaign=autumn", *world.period)
    assert autumn == {**hooked, "configuration_set": None}
    by_auto_tag = await cli_json(world.relay, "stats", "--json", "--tag", "ses:configuration-set=hooked", *world.period)
    assert by_auto_tag == autumn


async def test_stats_series_and_table(world: World) -> None:
    doc = await cli_json(world.relay, "stats", "--json", "--by", "hour", *world.period)
    series = doc.pop("series")
    assert doc == await cli_json(world.relay, "stats", "--json", *world.period)
    since = datetime.fromisoformat(world.since.replace("Z", "+00:00"))
    until = datetime.fromisoformat(world.until.replace("Z", "+00:00"))
    hours = int((until - since).total_seconds() // 3600) + 1
    assert [b["start"] for b in series] == [iso(since + timedelta(hours=h)) for h in range(hours)
                                            if since + timedelta(hours=h) < until]
    # Each event in the bucket of its own hour (relay's own DSN is not counted).
    records = [json.loads(x) for x in (await cli(world.relay, "events"))[1].splitlines()]
    expected: dict[str, Counter[str]] = {b["start"]: Counter() for b in series}
    key = {"Send": "send", "Delivery": "delivery", "Bounce": "bounce", "DeliveryDelay": "deliveryDelay",
           "Open": "open", "Click": "click"}
    for r in records:
        if "relay:notice" in r["mail"]["tags"]:
            continue
        expected[when(r)[:13] + ":00:00.000Z"][key[r["eventType"]]] += 1
    assert {b["start"]: {k: n for k, n in b["counts"].items() if n} for b in series} == {
        start: dict(c) for start, c in expected.items()}

    code, out, err = await cli(world.relay, "stats", *world.period)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"{world.since} to {world.until}, all configuration sets"
    for row in (r"Send\s+4", r"Delivery\s+8", r"DeliveryDelay\s+1", r"Bounce\s+1", r"Open\s+4", r"Click\s+5",
                r"Sent to\s+9", r"Opened \(unique\)\s+3", r"Delivery\s+88\.9%", r"Open\s+60\.0%",
                re.escape(SPRING) + r"\s+3\s+2", r"product=shoes\s+3"):
        assert any(re.fullmatch(row, line) for line in lines), row


async def test_events_types_counts_and_order(world: World) -> None:
    code, out, err = await cli(world.relay, "events")
    assert code == 0 and err == ""
    records = [json.loads(x) for x in out.splitlines()]
    assert Counter(r["eventType"] for r in records) == {"Send": 4, "Delivery": 9, "Bounce": 1, "DeliveryDelay": 1,
                                                        "Open": 4, "Click": 5}  # 9 deliveries: the DSN's too
    # In the order relay wrote them: the first attempt's outcomes in one commit (in envelope
    # order), then slow@'s retry.
    m1 = [(r["eventType"], r.get("delivery", r.get("bounce", r.get("deliveryDelay", {}))))
          for r in records if r["mail"]["messageId"] == world.ids["m1"] and r["eventType"] not in ("Open", "Click")]
    assert [kind for kind, _ in m1] == ["Send", "DeliveryDelay", "Delivery", "Delivery", "Bounce", "Delivery"]
    assert m1[1][1]["delayedRecipients"][0]["emailAddress"] == "slow@example.org"
    assert [x[1]["recipients"] for x in (m1[2], m1[3], m1[5])] == [["ana@example.org"], ["bob@example.org"],
                                                                    ["slow@example.org"]]
    assert m1[4][1]["bouncedRecipients"][0]["emailAddress"] == "bad@example.org"
    engagement = [(r["eventType"], (r.get("open") or r.get("click"))["recipient"],
                   (r.get("click") or {}).get("link"), (r.get("open") or r.get("click"))["userAgent"])
                  for r in records if r["eventType"] in ("Open", "Click")]
    assert engagement == [
        ("Open", "ana@example.org", None, "Reader/1"), ("Open", "ana@example.org", None, "Reader/2"),
        ("Click", "ana@example.org", SPRING, "Reader/1"), ("Click", "ana@example.org", SPRING, "Reader/1"),
        ("Click", "ana@example.org", ABOUT, "Reader/1"), ("Open", "bob@example.org", None, "Bob/1"),
        ("Click", "slow@example.org", SPRING, "Slow/1"), ("Open", "cy@example.org", None, "Cy/1"),
        ("Click", "cy@example.org", AUTUMN, "Cy/1")]
    # Filters: type, message, recipient, set (the webhook-only set's events are all there).
    _, out, _ = await cli(world.relay, "events", "--type", "open,Click", "--message", world.ids["m1"],
                          "--recipient", "ana@example.org")
    assert [json.loads(x)["eventType"] for x in out.splitlines()] == ["Open", "Open", "Click", "Click", "Click"]
    _, out, _ = await cli(world.relay, "events", "--configuration-set", "hooked")
    hooked = [json.loads(x) for x in out.splitlines()]
    assert [r["eventType"] for r in hooked] == [r["eventType"] for r in world.receiver.events]
    assert hooked == world.receiver.events  # the same SES records the webhook was sent
    _, out, _ = await cli(world.relay, "events", "--since", world.until)
    assert out == ""


async def test_message_json_is_each_recipients_timeline(world: World) -> None:
    m1 = world.ids["m1"]
    doc = await cli_json(world.relay, "message", m1, "--json")
    _, out, _ = await cli(world.relay, "events", "--message", m1)
    records = [json.loads(x) for x in out.splitlines()]
    send = records[0]
    assert send["eventType"] == "Send"

    def about(rcpt: str) -> list[dict[str, Any]]:
        mine = [r for r in records if r["eventType"] == "Send" or rcpt in json.dumps(
            {k: v for k, v in r.items() if k not in ("eventType", "mail")})]
        return sorted(mine, key=when)  # stable: ties stay in the order relay wrote them
    assert doc == {"message": send["mail"], "recipients": [
        {"address": "slow@example.org", "state": "delivered", "events": about("slow@example.org")},
        {"address": "ana@example.org", "state": "delivered", "events": about("ana@example.org")},
        {"address": "bob@example.org", "state": "delivered", "events": about("bob@example.org")},
        {"address": "bad@example.org", "state": "bounced", "events": about("bad@example.org")},
    ]}
    kinds = {r["address"]: [e["eventType"] for e in r["events"]] for r in doc["recipients"]}
    assert kinds["slow@example.org"][:3] == ["Send", "DeliveryDelay", "Delivery"]
    assert kinds == {"slow@example.org": ["Send", "DeliveryDelay", "Delivery", "Click"],
                     "ana@example.org": ["Send", "Delivery", "Open", "Open", "Click", "Click", "Click"],
                     "bob@example.org": ["Send", "Delivery", "Open"],
                     "bad@example.org": ["Send", "Bounce"]}
    assert doc["message"]["tags"]["campaign"] == ["spring"]
    assert doc["message"]["commonHeaders"]["subject"] == "Spring sale"

    code, out, err = await cli(world.relay, "message", m1)
    assert code == 0 and err == ""
    assert "bad@example.org: bounced" in out and "slow@example.org: delivered" in out
    assert re.search(r"Click\s+" + re.escape(SPRING) + r"\s+127\.0\.0\.1\s+Reader/1\s+tags product=shoes", out)
    assert re.search(r"DeliveryDelay\s+RecipientServerError\s+451 4\.3\.0 try later\s+expires 20", out)
    assert re.search(r"Bounce\s+Permanent/NoEmail\s+550 5\.1\.1 user unknown", out)

    code, out, err = await cli(world.relay, "message", "no-such-id")
    assert (code, out) == (1, "") and len(err.splitlines()) == 1 and "no-such-id" in err


async def api(world: World, path: str, **params: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(world.admin + path, params=params) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_admin_api_gives_the_same_documents_as_the_cli(world: World) -> None:
    """/api/stats, /api/messages/{id} and /api/events over the same traffic: the exact
    documents the CLI prints (they share relay.stats)."""
    period = {"since": world.since, "until": world.until}
    assert await api(world, "/api/stats", **period) == everything(world)
    for args, params in [(("--configuration-set", "news", "--by", "hour"), {"configuration_set": "news", "by": "hour"}),
                         (("--configuration-set", ""), {"configuration_set": ""}),
                         (("--configuration-set", "hooked", "--by", "day"), {"configuration_set": "hooked", "by": "day"}),
                         (("--tag", "campaign=spring"), {"tag": "campaign=spring"})]:
        assert await api(world, "/api/stats", **period, **params) == \
            await cli_json(world.relay, "stats", "--json", *world.period, *args), args
    for key in ("m1", "m2", "m4"):
        assert await api(world, f"/api/messages/{world.ids[key]}") == \
            await cli_json(world.relay, "message", world.ids[key], "--json")
    _, out, _ = await cli(world.relay, "events", "--message", world.ids["m1"])
    listed = await api(world, "/api/events", message=world.ids["m1"])
    assert [e["record"] for e in listed["events"]] == [json.loads(x) for x in out.splitlines()]
    assert len(listed["events"]) == 13  # Send, DeliveryDelay, 3 Delivery, Bounce, 3 Open, 4 Click


async def test_messages_list(world: World) -> None:
    rows = await cli_json(world.relay, "messages", "--json")
    by_id = {r["message_id"]: r for r in rows}
    assert [r["message_id"] for r in rows if r["message_id"] in world.ids.values()] == [
        world.ids[k] for k in ("m4", "m3", "m2", "m1")]  # newest first
    m1 = by_id[world.ids["m1"]]
    assert (m1["configuration_set"], m1["subject"], m1["recipients"], m1["states"]) == (
        "news", "Spring sale", 4, {"pending": 0, "delivered": 3, "bounced": 1})
    assert (m1["opens"], m1["clicks"]) == (3, 4)
    assert by_id[world.ids["m4"]]["configuration_set"] is None
    only = await cli_json(world.relay, "messages", "--json", "--configuration-set", "hooked")
    assert [r["message_id"] for r in only] == [world.ids["m2"]]
    to_eve = await cli_json(world.relay, "messages", "--json", "--recipient", "eve@example.org")
    assert [r["message_id"] for r in to_eve] == [world.ids["m3"]]
    m2_on = rows[[r["message_id"] for r in rows].index(world.ids["m2"])]["timestamp"]
    since_m2 = await cli_json(world.relay, "messages", "--json", "--since", m2_on)
    assert world.ids["m2"] in [r["message_id"] for r in since_m2] and world.ids["m1"] not in [
        r["message_id"] for r in since_m2]
    code, out, err = await cli(world.relay, "messages", "--configuration-set", "")
    assert code == 0 and world.ids["m4"] in out and world.ids["m1"] not in out


async def test_bad_input_is_one_line_and_exit_2(world: World) -> None:
    for args, says in [
        (("stats", "--since", "yesterday"), "--since"),
        (("stats", "--since", "1d", "--until", "3d"), "before"),
        (("stats", "--tag", "campaign"), "NAME=VALUE"),
        (("stats", "--by", "week"), "--by"),
        (("stats", "--configuration-set", "no such"), "--configuration-set"),
        (("events", "--type", "opens"), "--type"),
        (("events", "--since", "soon"), "--since"),
        (("messages", "--limit", "0"), "--limit"),
        (("nosuchcommand",), "nosuchcommand"),
    ]:
        code, out, err = await cli(world.relay, *args)
        assert (code, out) == (2, ""), (args, err)
        assert len(err.splitlines()) == 1 and err.startswith("relay: ") and says in err, (args, err)
    # A well-formed set name that is not configured: read anyway, with one warning line.
    code, out, err = await cli(world.relay, "stats", "--json", "--configuration-set", "gone")
    assert code == 0 and json.loads(out)["counts"]["send"] == 0
    assert len(err.splitlines()) == 1 and "warning" in err and "'gone'" in err


async def test_prune_version_and_check_config(world: World, tmp_path: Path) -> None:
    code, out, err = await cli(world.relay, "prune")
    assert code == 0 and err == "" and "pruned" in out
    assert (await cli_json(world.relay, "stats", "--json", *world.period))["counts"]["send"] == 4  # nothing was old
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "relay.cli", "--version",
                                                stdout=asyncio.subprocess.PIPE)
    out_b, _ = await proc.communicate()
    assert proc.returncode == 0 and re.fullmatch(r"relay \d+\.\d+\.\d+\n", out_b.decode())
    public = tmp_path / "public.toml"
    public.write_text('[smtp]\nlisten = "0.0.0.0:2525"\n')
    code, out, err = await cli(world.relay, "check-config")
    assert code == 0 and "OK" in out and err == ""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "relay.cli", "check-config", "--config",
                                                str(public), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out_b, err_b = await proc.communicate()
    assert proc.returncode == 0 and b"OK" in out_b
    assert err_b.decode().splitlines() == [
        "relay: warning: smtp.listen is 0.0.0.0:2525 but smtp.allowed_clients is loopback only: other hosts will "
        "be refused (550)"]
    # No storage file where the configuration says: one line, exit 1, and none is created.
    missing = tmp_path / "missing.db"
    public.write_text(f'[storage]\npath = "{missing}"\n')
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "relay.cli", "stats", "--config", str(public),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out_b, err_b = await proc.communicate()
    assert (proc.returncode, out_b) == (1, b"") and len(err_b.splitlines()) == 1 and b"no storage file" in err_b
    assert not missing.exists()


async def test_events_follow_ctrl_c_exits_0(world: World) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.cli", "events", "-f", "--type", "click", "--config", str(world.relay.config_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))["eventType"] == "Click"
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert await proc.stderr.read() == b""  # no traceback
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_events_follow_prints_new_ones_and_exits_0_on_sigterm(world: World) -> None:
    # Last in the module: the open it adds would change the other tests' counts.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.cli", "events", "--follow", "--type", "open", "--recipient", "bob@example.org",
        "--config", str(world.relay.config_path), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert first["eventType"] == "Open" and first["open"]["userAgent"] == "Bob/1"
        pixel = urls_in(next(m for m in world.up.messages if m.rcpts == ["bob@example.org"]).data)[0][0]
        async with aiohttp.ClientSession() as http:
            async with http.get(pixel, headers={"User-Agent": "Bob/2"}) as r:
                assert r.status == 200
        new = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert new["open"]["userAgent"] == "Bob/2" and new["open"]["recipient"] == "bob@example.org"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert proc.stderr is not None and await proc.stderr.read() == b""
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
