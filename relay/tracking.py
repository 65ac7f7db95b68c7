# The tracking HTTP server: /o/{token} answers the pixel, /c/{token} redirects,
# /healthz says the process is up. Answers come from the signed token alone, at
# once; recording the Open/Click event happens after, off the request path.
from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import time
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from relay.config import Config, in_networks
from relay.events import records
from relay.events.bus import EventBus
from relay.spool import Spool
from relay.tokens import ClickClaim, OpenClaim, Signer

log = logging.getLogger("relay.tracking")

# A 1x1 GIF89a whose one pixel is the transparent colour (42 bytes).
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_CACHE = {
    # Every open should reach us: forbid caching by browsers and proxies.
    "Cache-Control": "no-store, no-cache, must-revalidate, private",
    "Pragma": "no-cache",
    "Expires": "Thu, 01 Jan 1970 00:00:00 GMT",
}
PIXEL_HEADERS = {"Content-Type": "image/gif", **NO_CACHE}


class TrackingServer:
    def __init__(self, *, config: Config, signer: Signer, spool: Spool, bus: EventBus,
                 clock: Any = time.time) -> None:
        self._config = config
        self._signer = signer
        self._spool = spool
        self._bus = bus
        self._clock = clock
        self._window = config.tracking.window_days * 86400.0
        self._proxies = config.tracking.trusted_proxies
        self._mail_cache: OrderedDict[str, Any] = OrderedDict()
        self._pending: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self.app = web.Application()
        self.app.router.add_get("/o/{token}", self.open)
        self.app.router.add_route("GET", "/c/{token}", self.click)
        self.app.router.add_route("HEAD", "/c/{token}", self.click)
        self.app.router.add_get("/healthz", self.healthz)
        self.app.on_shutdown.append(self._drain)

    async def start(self) -> None:
        listen = self._config.tracking.listen
        # No access log: URLs carry tokens and addresses.
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host=listen.host, port=listen.port)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._drain()

    async def _drain(self, app: web.Application | None = None) -> None:
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n", headers={"Cache-Control": "no-store"})

    async def open(self, request: web.Request) -> web.Response:
        claim = self._signer.verify_open(request.match_info["token"])
        if claim is None:
            return web.Response(status=404, text="not found\n")
        self._later(claim, request)
        return web.Response(body=PIXEL, headers=PIXEL_HEADERS)

    async def click(self, request: web.Request) -> web.Response:
        claim = self._signer.verify_click(request.match_info["token"])
        # Never an open redirect: only an http(s) URL carried in a valid token.
        if claim is None or not claim.url.lower().startswith(("http://", "https://")):
            return web.Response(status=404, text="not found\n")
        self._later(claim, request)
        # A plain Response is about twice as fast as raising HTTPFound.
        return web.Response(status=302, headers={"Location": claim.url, **NO_CACHE})

    def _later(self, claim: OpenClaim | ClickClaim, request: web.Request) -> None:
        now = self._clock()
        if now - claim.sent_at > self._window:
            return  # past the window: still served, no longer recorded (SES: 60 days)
        ip = self.client_ip(request)
        ua = request.headers.get("User-Agent", "")
        task = asyncio.create_task(self._record(claim, now, ip, ua))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def client_ip(self, request: web.Request) -> str:
        """The peer, or X-Forwarded-For's nearest untrusted hop when the peer is a trusted proxy."""
        peer = request.remote or ""
        if not self._proxies or not in_networks(peer, self._proxies):
            return peer
        hops = [h.strip() for h in ",".join(request.headers.getall("X-Forwarded-For", [])).split(",") if h.strip()]
        for hop in reversed(hops):
            if not in_networks(hop, self._proxies):
                return hop if _valid_ip(hop) else peer
        return hops[0] if hops and _valid_ip(hops[0]) else peer

    async def _record(self, claim: OpenClaim | ClickClaim, now: float, ip: str, ua: str) -> None:
        try:
            found = await self._mail(claim.message_id)
            if found is None:
                log.info("hit for unknown message %s: not recorded", claim.message_id)
                return
            cset, mail = found
            ts = datetime.fromtimestamp(now, timezone.utc)
            if isinstance(claim, ClickClaim):
                record = records.click_event(mail, recipient=claim.recipient, timestamp=ts, ip_address=ip,
                                             user_agent=ua, link=claim.url, link_tags=claim.link_tags)
            else:
                record = records.open_event(mail, recipient=claim.recipient, timestamp=ts,
                                            ip_address=ip, user_agent=ua)
            self._bus.publish(cset, record, claim.recipient)
        except Exception:  # noqa: BLE001 - a recording failure must never affect serving
            log.exception("could not record a hit for %s", claim.message_id)

    async def _mail(self, message_id: str) -> Any:
        cached = self._mail_cache.get(message_id)
        if cached is not None:
            self._mail_cache.move_to_end(message_id)
            return cached
        found = await self._spool.mail(message_id)
        if found is not None:
            self._mail_cache[message_id] = found
            if len(self._mail_cache) > 10_000:
                self._mail_cache.popitem(last=False)
        return found


def _valid_ip(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
        return True
    except ValueError:
        return False
