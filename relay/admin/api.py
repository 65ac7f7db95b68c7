# The JSON API: the same documents as the CLI's --json, through the same relay.stats
# queries. A bad parameter is a 400 with one line {"error": ...}; an unknown message 404.
from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from relay import stats
from relay.admin import params
from relay.store import Store, suppression

EVENTS_LIMIT = 1000


def json_response(doc: Any, *, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(doc, ensure_ascii=False), status=status, content_type="application/json",
                        headers={"Cache-Control": "no-store"})


def error(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status=status)


def now_utc() -> datetime:
    return datetime.now(UTC)


class Api:
    def __init__(self, store: Store, *, clock: Callable[[], datetime] = now_utc) -> None:
        self._store = store
        self._clock = clock

    def register(self, app: web.Application) -> None:
        app.router.add_get("/api/stats", self.stats)
        app.router.add_get("/api/events", self.events)
        app.router.add_get("/api/messages", self.messages)
        app.router.add_get("/api/messages/{id}", self.message)
        app.router.add_get("/api/suppression", self.suppression_list)

    async def stats(self, request: web.Request) -> web.Response:
        try:
            params.known(request.query, {"configuration_set", "since", "until", "by", "tag"})
            args = params.stats_args(request.query, self._clock())
        except params.ParamError as e:
            return error(400, str(e))
        return json_response(await stats.stats(self._store, **args))

    async def events(self, request: web.Request) -> web.Response:
        """{"after": the last seq returned (poll again with it), "events": [{"seq", "record"}]}."""
        q = request.query
        try:
            params.known(q, {"type", "message", "recipient", "configuration_set", "since", "after", "limit"})
            after = params.integer(q, "after", 0, maximum=2**62)
            found = await stats.events(
                self._store, types=params.types(q), message_id=q.get("message") or None,
                recipient=q.get("recipient") or None, configuration_set=params.configuration_set(q),
                since=params.time(q, "since", self._clock()), after_seq=after,
                limit=params.integer(q, "limit", EVENTS_LIMIT, minimum=1, maximum=EVENTS_LIMIT))
        except params.ParamError as e:
            return error(400, str(e))
        last = found[-1][0] if found else after
        return json_response({"after": last, "events": [{"seq": seq, "record": record} for seq, record in found]})

    async def messages(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            params.known(q, {"since", "until", "configuration_set", "recipient", "q", "limit"})
            period = params.period(q, self._clock()) if q.get("since") or q.get("until") else None
            found = await stats.messages(
                self._store, period=period, configuration_set=params.configuration_set(q),
                recipient=q.get("recipient") or None, search=q.get("q") or None,
                limit=params.integer(q, "limit", 100, minimum=1, maximum=1000))
        except params.ParamError as e:
            return error(400, str(e))
        return json_response({"messages": found})

    async def message(self, request: web.Request) -> web.Response:
        doc = await stats.message(self._store, request.match_info["id"])
        if doc is None:
            return error(404, f"no message {request.match_info['id']!r}")
        return json_response(doc)

    async def suppression_list(self, request: web.Request) -> web.Response:
        """The account suppression list by address, as `relay suppression list --json`."""
        q = request.query
        try:
            params.known(q, {"q", "limit"})
            limit = params.integer(q, "limit", 1000, minimum=1, maximum=10_000)
        except params.ParamError as e:
            return error(400, str(e))
        found = await suppression.entries(self._store, limit=limit, search=q.get("q") or None)
        return json_response({"suppressed": [e.as_json() for e in found], "total": await suppression.count(self._store)})
