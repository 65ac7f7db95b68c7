# Dead letters end to end: a real `relay serve` posting to an endpoint that refuses one
# event forever; the events behind it go on, the refused one reaches the dead letters
# after [webhook] max_retry_seconds, is counted, and `relay webhook replay` (another
# process, no restart) gets it delivered once the endpoint takes it.
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import aiosmtplib
import pytest
from aiohttp import web

from tests.support import RelayProcess, Upstream, free_port, wait_for

MESSAGE = ("From: a@example.com\r\nTo: b@example.org\r\nSubject: {subject}\r\n"
           "X-SES-CONFIGURATION-SET: app\r\n\r\nHello\r\n")


class Endpoint:
    """Answers 500 to the Send event of `refuse` (a subject) until `accept` is set."""

    def __init__(self) -> None:
        self.port = free_port()
        self.refuse = "first"
        self.accept = asyncio.Event()
        self.delivered: list[tuple[str, str]] = []  # (eventType, subject) answered 200
        self.refused = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def hook(self, request: web.Request) -> web.Response:
        record = json.loads(await request.read())
        key = (record["eventType"], record["mail"]["commonHeaders"]["subject"])
        if key == ("Send", self.refuse) and not self.accept.is_set():
            self.refused += 1
            return web.Response(status=500)
        self.delivered.append(key)
        return web.Response(status=204)


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    e = Endpoint()
    await e.start()
    try:
        yield e
    finally:
        await e.stop()


def cli(relay: RelayProcess, *args: str) -> Any:
    r = subprocess.run([sys.executable, "-m", "relay.cli", *args, "--config", str(relay.config_path)],
                       cwd=relay.tmp, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def dead_letters(relay: RelayProcess) -> list[dict[str, Any]]:
    return json.loads(cli(relay, "webhook", "dead-letters", "--destination", "app/hook", "--json"))


async def test_refused_event_is_dead_lettered_then_replayed(tmp_path: Path, endpoint: Endpoint) -> None:
    upstream = await Upstream().start()
    admin = free_port()
    relay = RelayProcess(tmp_path, (
        f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
        "[webhook]\nmax_retry_seconds = 1\n"
        "[configuration_sets.app]\n[[configuration_sets.app.event_destinations]]\n"
        f'name = "hook"\ntype = "webhook"\nurl = "http://127.0.0.1:{endpoint.port}/hook"\n'
        'matching_event_types = ["send", "delivery"]\n'), upstream_url=f"smtp://127.0.0.1:{upstream.port}")
    await relay.start()
    try:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.smtp_port, timeout=20) as client:
            for subject in ("first", "second"):
                await client.sendmail("a@example.com", ["b@example.org"], MESSAGE.format(subject=subject).encode())
        # The other message's events are not held behind the refused one.
        await wait_for(lambda: {("Send", "second"), ("Delivery", "second")} <= set(endpoint.delivered))
        # Polled in the file (a CLI run would block this loop, and the endpoint with it).
        await wait_for(lambda: relay.query("SELECT count(*) FROM webhook_dead_letters") == [(1,)], 20)
        dead = dead_letters(relay)
        assert [(d["destination"], d["body"]["eventType"], d["reason"]) for d in dead] == [
            ("app/hook", "Send", "HTTP 500")]
        assert dead[0]["attempts"] == endpoint.refused >= 2
        # Its own message's Delivery waited behind it (order per message), then went.
        await wait_for(lambda: ("Delivery", "first") in endpoint.delivered)
        assert ("Send", "first") not in endpoint.delivered
        stats = json.loads(cli(relay, "stats", "--json"))
        assert stats["webhook_dead_letters"] == 1
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{admin}/metrics") as r:
            assert 'relay_webhook_dead_letters{destination="app/hook"} 1.0' in await r.text()

        endpoint.accept.set()
        # A bare NAME is enough when one configuration set has a webhook destination of that name.
        assert "1 dead letter(s) re-queued for app/hook" in cli(relay, "webhook", "replay", "--destination", "hook")
        await wait_for(lambda: ("Send", "first") in endpoint.delivered, 20)
        assert dead_letters(relay) == []
        assert "No dead letters." in cli(relay, "webhook", "dead-letters")
        assert relay.query("SELECT count(*) FROM webhook_outbox") == [(0,)]
    finally:
        assert await relay.stop() == 0
        await upstream.stop()
    assert relay.output().count("moved to the dead letters") == 1  # logged once


def test_a_bare_destination_name_must_name_one_webhook_destination(tmp_path: Path) -> None:
    hook = 'type = "webhook"\nurl = "http://127.0.0.1:9/hook"\nmatching_event_types = ["send"]\n'
    path = tmp_path / "relay.toml"
    path.write_text(f'[storage]\npath = "{tmp_path / "relay.db"}"\n' + "".join(
        f'[configuration_sets.{s}]\n[[configuration_sets.{s}.event_destinations]]\nname = "hook"\n{hook}'
        for s in ("a", "b")))
    for command in ("dead-letters", "replay"):
        for name, why in [("hook", "'hook' is a webhook destination of several configuration sets (a/hook, b/hook)"),
                          ("nope", "no webhook destination named 'nope'")]:
            r = subprocess.run([sys.executable, "-m", "relay.cli", "webhook", command, "--destination", name,
                                "--config", str(path)], capture_output=True, text=True, timeout=60)
            assert (r.returncode, r.stdout) == (2, "")
            assert r.stderr.startswith(f"relay: --destination: {why}") and r.stderr.count("\n") == 1


async def test_replay_leaves_the_dead_letters_of_unconfigured_destinations_listed(tmp_path: Path) -> None:
    """Re-queued for a destination no relay runs, an event would wait in the outbox unseen:
    replay takes only the configured destinations' and says which stay listed."""
    from relay.store import Store, webhooks

    db = tmp_path / "relay.db"
    store = Store(str(db))
    await store.open()
    try:
        for n, dest in enumerate(["app/hook", "old/gone", "app/hook"]):
            await store.write([(webhooks.INSERT, (f"e{n}", dest, f"m{n}", '{"eventType":"Send"}', 0.0))])
            [(seq,)] = await store.fetchall("SELECT seq FROM webhook_outbox WHERE event_id = ?", (f"e{n}",))
            await store.write(webhooks.bury(seq, attempts=3, refused_since=0.0, now=1.0, reason="HTTP 500"))
    finally:
        await store.close()
    path = tmp_path / "relay.toml"
    path.write_text(f'[storage]\npath = "{db}"\n[configuration_sets.app]\n'
                    '[[configuration_sets.app.event_destinations]]\nname = "hook"\ntype = "webhook"\n'
                    'url = "http://127.0.0.1:9/hook"\nmatching_event_types = ["send"]\n')

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "relay.cli", "webhook", *args, "--config", str(path)],
                              capture_output=True, text=True, timeout=60)

    r = run("replay", "--destination", "old/gone")
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr.startswith("relay: --destination: 'old/gone' is not a webhook destination in") and (
        "nothing would post its dead letters" in r.stderr and r.stderr.count("\n") == 1)
    r = run("replay")
    assert (r.returncode, r.stdout) == (0, "2 dead letter(s) re-queued\n")
    assert r.stderr == f"relay: warning: dead letters of destinations not in {path} stay listed: old/gone\n"
    r = run("dead-letters", "--json")
    assert [(d["destination"], d["event_id"]) for d in json.loads(r.stdout)] == [("old/gone", "e1")]
