# confirm_subscription end to end: `relay serve` posts a SubscriptionConfirmation first;
# a consumer that fetches SubscribeURL (on relay's tracking listener) as AWS's sample
# endpoint does gets the held events after it.
from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import aiosmtplib
from aiohttp import web

from tests.support import RelayProcess, Upstream, free_port, wait_for

MESSAGE = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: Hi\r\nX-SES-CONFIGURATION-SET: app\r\n\r\nHello\r\n"


async def test_subscription_is_confirmed_through_relays_listener(tmp_path: Path) -> None:
    got: list[dict[str, str]] = []

    async def consumer(request: web.Request) -> web.Response:
        doc = json.loads(await request.read())
        got.append(doc)
        if doc["Type"] == "SubscriptionConfirmation":
            async with aiohttp.ClientSession() as http, http.get(doc["SubscribeURL"]) as r:
                assert r.status == 200
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/sns", consumer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    upstream = await Upstream().start()
    relay = RelayProcess(tmp_path, (
        "[configuration_sets.app]\n[[configuration_sets.app.event_destinations]]\n"
        f'name = "hook"\ntype = "webhook"\nformat = "sns"\nconfirm_subscription = true\n'
        f'url = "http://127.0.0.1:{port}/sns"\nmatching_event_types = ["send"]\n'),
        upstream_url=f"smtp://127.0.0.1:{upstream.port}")
    await relay.start()
    try:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.smtp_port, timeout=20) as client:
            await client.sendmail("a@example.com", ["b@example.org"], MESSAGE)
        await wait_for(lambda: got and got[-1]["Type"] == "Notification", 20)
        # (Asked again only if the consumer's fetch failed, e.g. before the listener was up.)
        *asked, sent = got
        assert asked and {d["Type"] for d in asked} == {"SubscriptionConfirmation"}
        assert asked[0]["SubscribeURL"].startswith(f"http://127.0.0.1:{relay.http_port}/sns/confirm?")
        assert asked[0]["TopicArn"] == sent["TopicArn"] == "arn:aws:sns:relay:000000000000:app-hook"
        assert json.loads(sent["Message"])["eventType"] == "Send"
    finally:
        assert await relay.stop() == 0
        await upstream.stop()
        await runner.cleanup()
