# The tracking HTTP server: /o/{token} answers the pixel, /c/{token}/{url} redirects,
# /u/{token} unsubscribes (RFC 8058 one-click POST; GET only shows a confirmation page),
# /healthz says whether the process and its storage are usable. Answers come from the
# signed token alone, at once; recording the Open/Click event happens after, off the
# request path (recorder.py). The port faces the internet: connections.py guards it.
from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import re
import resource
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import jinja2
from aiohttp import web

from relay import unsubscribe
from relay.config import Config, in_networks
from relay.events import records
from relay.events.bus import EventBus
from relay.limits import ConnectionLimits, SharedCounters, connection_budget
from relay.metrics import Metrics
from relay.spool import Spool
from relay.store import Store
from relay.store import suppression as contacts
from relay.tokens import MAX_LINK_PATH, Signer, UnsubscribeClaim
from relay.tracking.connections import Guard, GuardedHandler
from relay.tracking.recorder import HitRecorder

# A 1x1 GIF89a whose one pixel is the transparent colour (42 bytes).
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_CACHE = {
    # Every open should reach us: forbid caching by browsers and proxies.
    "Cache-Control": "no-store, no-cache, must-revalidate, private",
    "Pragma": "no-cache",
    "Expires": "Thu, 01 Jan 1970 00:00:00 GMT",
}
PIXEL_HEADERS = {"Content-Type": "image/gif", **NO_CACHE}
# Every link click_link_fits() lets through must be served: its path is at most
# MAX_LINK_PATH, plus "HEAD " and " HTTP/1.1" for the pure-Python parser, which counts
# the whole request line (the C parser counts the target only). Header fields keep
# aiohttp's 8190, as SES refuses more than 8 KB of headers.
MAX_LINE_SIZE = MAX_LINK_PATH + 190
MAX_FIELD_SIZE = 8190
# How long /healthz waits for its write to an unwell storage before answering 503.
HEALTH_RECHECK_SECONDS = 2.0
# The unsubscribe page: no script, no remote anything; its form posts back to itself.
PAGE_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                                           "frame-ancestors 'none'; base-uri 'none'"}
# Subscription event sources (SES §3.8): a mailbox provider's one-click POST carries the
# body List-Unsubscribe=One-Click (RFC 8058 §3.2); the page's button posts confirm=page.
ONE_CLICK_SOURCE, PAGE_SOURCE = "UnsubscribeHeader", "UnsubscribeLink"
log = logging.getLogger("relay.tracking")


def max_connections(config: Config, nofile: int | None = None) -> int:
    """tracking.max_connections, or (0, "auto") this listener's share of the fd limit."""
    if config.tracking.max_connections:
        return config.tracking.max_connections
    if nofile is None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        nofile = soft if soft != resource.RLIM_INFINITY else 1 << 20
    return connection_budget(nofile, upstream_connections=config.upstream.connections).http


class TrackingServer:
    def __init__(self, *, config: Config, signer: Signer, spool: Spool, bus: EventBus,
                 store: Store | None = None, clock: Callable[[], float] = time.time,
                 metrics: Metrics | None = None, shared_clients: SharedCounters | None = None) -> None:
        self._config = config
        self._shared_clients = shared_clients  # with several processes: per-client counts they share
        hits = (metrics or Metrics()).tracking_hits
        # The labelled children resolved once: labels() takes a lock and builds a key per call.
        self._opens, self._clicks, self._invalid = (hits.labels(kind=k) for k in ("open", "click", "invalid"))
        self._signer = signer
        self._store = store  # for /healthz: its last_error, rechecked only when set
        self._spool = spool
        self._bus = bus
        self._clock = clock
        # One unsubscribe at a time per process: the old preferences read and the change
        # written are one step, so a repeated POST finds the change and emits nothing.
        self._unsubscribing = asyncio.Lock()
        self._pages = jinja2.Environment(loader=jinja2.PackageLoader("relay.tracking", "templates"),
                                         autoescape=True, undefined=jinja2.StrictUndefined)
        self._proxies = config.tracking.trusted_proxies
        self.recorder = HitRecorder(spool=spool, bus=bus, window_seconds=config.tracking.window_days * 86400.0,
                                    clock=clock)
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self.guard: Guard | None = None
        self.app = web.Application()
        # add_get also answers HEAD (RFC 9110 section 9.3.2), which handlers do not record.
        self.app.router.add_get("/o/{token}", self.open)
        self.app.router.add_get("/c/{rest:.+}", self.click)
        self.app.router.add_get("/u/{token}", self.unsubscribe_page)
        self.app.router.add_post("/u/{token}", self.unsubscribe)
        self.app.router.add_get("/healthz", self.healthz)
        self.app.on_shutdown.append(self._drain)

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen on tracking.listen, or on `sock` (one of several processes' sockets)."""
        tracking = self._config.tracking
        handler_args: dict[str, Any] = dict(
            access_log=None,  # no access log: URLs carry tokens
            keepalive_timeout=tracking.keepalive_timeout,  # idle between requests
            max_line_size=MAX_LINE_SIZE, max_field_size=MAX_FIELD_SIZE,
        )
        self._runner = web.AppRunner(self.app, handle_signals=False, **handler_args)
        await self._runner.setup()
        manager = self._runner.server
        assert manager is not None
        limits = ConnectionLimits(total=max_connections(self._config), per_client=tracking.max_connections_per_client,
                                  shared=self._shared_clients)
        guard = self.guard = Guard(limits=limits, header_timeout=tracking.header_timeout,
                                   trusted_proxies=tracking.trusted_proxies)
        loop = asyncio.get_running_loop()
        # Our own listener instead of web.TCPSite, so that each connection gets the
        # guarded protocol; the runner still owns the app's lifecycle and shutdown.
        where: dict[str, Any] = ({"sock": sock} if sock is not None else
                                 {"host": tracking.listen.host, "port": tracking.listen.port, "reuse_address": True})
        self._server = await loop.create_server(
            lambda: GuardedHandler(manager, loop=loop, guard=guard, **handler_args), **where)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # stop accepting; the runner closes the connections
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if server is not None:
            await server.wait_closed()
        await self.recorder.close()

    async def _drain(self, app: web.Application | None = None) -> None:
        await self.recorder.drain()

    async def healthz(self, request: web.Request) -> web.Response:
        error = None
        if self._store is not None and self._store.last_error is not None:
            try:  # a commit failed: is the storage usable again?
                error = await asyncio.wait_for(self._store.recheck(), HEALTH_RECHECK_SECONDS)
            except TimeoutError:
                error = self._store.last_error
        if error:
            # Every message gets 451 meanwhile: a load balancer should know.
            reason = " ".join(error.split())[:200]
            return web.Response(status=503, text=f"unavailable: storage: {reason}\n",
                                headers={"Cache-Control": "no-store"})
        return web.Response(text="ok\n", headers={"Cache-Control": "no-store"})

    async def open(self, request: web.Request) -> web.Response:
        claim = self._signer.verify_open(request.match_info["token"])
        if claim is None:
            self._invalid.inc()
            return web.Response(status=404, text="not found\n")
        # HEAD is a link checker or a proxy's prefetch, not someone reading: answered, not recorded.
        if request.method == "GET":
            self._opens.inc()
            self.recorder.hit(claim, self.client_ip(request), request.headers.get("User-Agent", ""))
        return web.Response(body=PIXEL, headers=PIXEL_HEADERS)

    async def click(self, request: web.Request) -> web.Response:
        # The raw path: match_info has %2F, %3F, %25 ... decoded, but the signed URL is
        # decoded exactly once, by the token module.
        rest = _after_c(request.raw_path)
        claim = self._signer.verify_click(rest) if "/" in rest else self._signer.verify_legacy_click(rest)
        # Never an open redirect: only an http(s) URL carried in a valid token.
        if claim is None or not claim.url.lower().startswith(("http://", "https://")):
            self._invalid.inc()
            return web.Response(status=404, text="not found\n")
        if request.method == "GET":
            self._clicks.inc()
            self.recorder.hit(claim, self.client_ip(request), request.headers.get("User-Agent", ""))
        # A plain Response is about twice as fast as raising HTTPFound.
        return web.Response(status=302, headers={"Location": _location(claim.url), **NO_CACHE})

    async def _unsubscription(self, request: web.Request) -> tuple[UnsubscribeClaim, str | None,
                                                                    records.MailInfo, str] | None:
        """The token's claim, the message's set and mail, and the recipient; None: 404."""
        claim = self._signer.verify_unsubscribe(request.match_info["token"])
        found = await self._spool.mail(claim.message_id) if claim is not None else None
        if claim is None or found is None or claim.recipient_index >= len(found[1].destination):
            self._invalid.inc()  # forged, or a message pruned after [tracking] window_days
            return None
        cset, mail = found
        return claim, cset, mail, mail.destination[claim.recipient_index]

    def _page(self, claim: UnsubscribeClaim, *, done: bool, already: bool = False) -> web.Response:
        where = unsubscribe.ListManagement(claim.contact_list, claim.topic).describe()
        html = self._pages.get_template("unsubscribe.html").render(where=where, done=done, already=already)
        return web.Response(text=html, content_type="text/html", headers=PAGE_HEADERS)

    async def unsubscribe_page(self, request: web.Request) -> web.Response:
        """GET (and HEAD): a confirmation page. Changes nothing: link scanners follow GETs."""
        found = await self._unsubscription(request)
        if found is None:
            return web.Response(status=404, text="not found\n")
        return self._page(found[0], done=False)

    async def unsubscribe(self, request: web.Request) -> web.Response:
        """POST: unsubscribe at once (RFC 8058 §3.2), one Subscription event per change."""
        found = await self._unsubscription(request)
        if found is None:
            return web.Response(status=404, text="not found\n")
        claim, cset, mail, rcpt = found
        try:
            form = await request.post()
        except Exception:  # noqa: BLE001 - a body we cannot read still unsubscribes (one-click)
            form = None
        source = ONE_CLICK_SOURCE if form is not None and form.get("List-Unsubscribe") == "One-Click" else PAGE_SOURCE
        store = self._spool.store
        async with self._unsubscribing:
            try:
                old = unsubscribe.with_topic(await contacts.preferences(store, claim.contact_list, rcpt), claim.topic)
                new = unsubscribe.opted_out(old, claim.topic)
                if new == old:  # already unsubscribed: nothing changes, no event
                    return self._page(claim, done=True, already=True)
                now = self._clock()
                event = records.subscription_event(
                    mail, recipient=rcpt, contact_list=claim.contact_list,
                    timestamp=datetime.fromtimestamp(now, UTC), source=source, new=new, old=old)
                await store.write(contacts.opt_out_statements(claim.contact_list, rcpt, claim.topic, now)
                                  + self._bus.statements(cset, event, rcpt))
            except Exception:  # noqa: BLE001 - e.g. the disk is full: the sender may try again
                log.exception("unsubscribe for %s not recorded", claim.message_id)
                return web.Response(status=503, text="unavailable, try again later\n",
                                    headers={"Retry-After": "60"})
        self._bus.committed()
        log.info("unsubscribed a recipient of %s from %s (%s)", claim.message_id, claim.contact_list, source,
                 extra={"message_id": claim.message_id, "outcome": "unsubscribed", "source": source})
        return self._page(claim, done=True)

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


def _after_c(raw_path: str) -> str:
    """What follows /c/ in the request target, without a query a client or proxy added."""
    path = raw_path.partition("?")[0]
    if not path.startswith("/"):  # absolute-form target, as some proxies send (RFC 9112 section 3.2.2)
        authority = path.find("//")
        slash = path.find("/", authority + 2) if authority >= 0 else -1
        path = path[slash:] if slash >= 0 else ""
    return path[3:] if path.startswith("/c/") else ""


# Location is a URI-reference (RFC 9110 section 10.2.2): a tracked href is one already,
# and goes out as is; anything else (a space, UTF-8, CR LF) is percent-encoded.
_URI_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")
_URI_SAFE = "-._~:/?#[]@!$&'()*+,;=%"


def _location(url: str) -> str:
    return url if _URI_CHARS.fullmatch(url) else quote(url, safe=_URI_SAFE, encoding="utf-8", errors="surrogatepass")


def _valid_ip(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
        return True
    except ValueError:
        return False
