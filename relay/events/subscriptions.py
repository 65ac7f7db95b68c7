# GET /sns/confirm on the tracking listener: where a consumer of an sns-format webhook
# with confirm_subscription = true confirms it, as it would fetch SNS's SubscribeURL.
# A valid Token records the confirmed topic in the store; the destination's sender,
# which polls for it, then starts posting.
from __future__ import annotations

import hmac
import uuid
from collections.abc import Mapping
from xml.sax.saxutils import escape

from aiohttp import web

from relay.events import sns
from relay.store import Store

_SET = "INSERT INTO settings(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"


class SubscriptionConfirmations:
    def __init__(self, *, store: Store, key: bytes, topics: Mapping[str, str]) -> None:
        self._store = store
        self._key = key
        self._topics = topics  # destination ("set/name") -> topic ARN, for those that confirm

    def register(self, app: web.Application) -> None:
        app.router.add_get(sns.CONFIRM_PATH, self.confirm)

    async def confirm(self, request: web.Request) -> web.Response:
        topic, token = request.query.get("TopicArn", ""), request.query.get("Token", "")
        for destination, arn in self._topics.items():
            if arn == topic and hmac.compare_digest(sns.confirm_token(self._key, destination, arn), token):
                await self._store.write([(_SET, (sns.confirmed_key(destination), arn))])
                # SNS answers ConfirmSubscription with the new subscription's ARN, in XML.
                subscription = escape(f"{arn}:{uuid.uuid4()}")
                return web.Response(content_type="text/xml", text=(
                    "<ConfirmSubscriptionResponse><ConfirmSubscriptionResult><SubscriptionArn>"
                    f"{subscription}</SubscriptionArn></ConfirmSubscriptionResult></ConfirmSubscriptionResponse>\n"))
        return web.Response(status=404, text="not found\n")
