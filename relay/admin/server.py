# The admin listener: an aiohttp app on [admin] listen with the tracking listener's
# connection caps, the token check in front of everything but the static files and
# the login form, and the API, /metrics and the pages behind it.
from __future__ import annotations

import asyncio
import logging
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler

from relay.admin.api import Api, error
from relay.admin.auth import Auth
from relay.admin.metrics import MetricsEndpoint
from relay.admin.pages import Pages
from relay.config import Config
from relay.limits import ConnectionLimits
from relay.metrics import Metrics
from relay.store import Store
from relay.tokens import Signer
from relay.tracking.connections import Guard, GuardedHandler

log = logging.getLogger("relay.admin")

# A handful of people and one Prometheus: small caps, so a stuck client cannot use up
# the process's descriptors (the tracking and SMTP listeners need them).
MAX_CONNECTIONS = 64
MAX_CONNECTIONS_PER_CLIENT = 32
HEADER_TIMEOUT = 10.0
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css"}
OPEN_PATHS = ("/login", "/logout", "/static/")


class AdminServer:
    def __init__(self, *, config: Config, store: Store, signer: Signer, metrics: Metrics) -> None:
        assert config.admin is not None
        self._config = config
        self._listen = config.admin.listen
        self.auth = Auth(config.admin.token)
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._static: dict[str, bytes] = {}
        self.app = web.Application(middlewares=[self._guard_requests])
        self.pages = Pages(config=config, store=store, signer=signer, auth_required=self.auth.required)
        Api(store).register(self.app)
        MetricsEndpoint(config=config, store=store, metrics=metrics).register(self.app)
        self.pages.register(self.app)
        self.app.router.add_get("/static/{name}", self.static)
        self.app.router.add_get("/login", self.login_form)
        self.app.router.add_post("/login", self.login)
        self.app.router.add_post("/logout", self.logout)

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        handler_args: dict[str, Any] = dict(access_log=None)  # no access log: URLs carry addresses
        self._runner = web.AppRunner(self.app, handle_signals=False, **handler_args)
        await self._runner.setup()
        manager = self._runner.server
        assert manager is not None
        guard = Guard(limits=ConnectionLimits(total=MAX_CONNECTIONS, per_client=MAX_CONNECTIONS_PER_CLIENT),
                      header_timeout=HEADER_TIMEOUT, trusted_proxies=())
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: GuardedHandler(manager, loop=loop, guard=guard, **handler_args),
            host=self._listen.host, port=self._listen.port, reuse_address=True)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if server is not None:
            await server.wait_closed()

    @web.middleware
    async def _guard_requests(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(OPEN_PATHS) and not self.auth.allowed(request):
            if not self.auth.required:  # a foreign Host name on a token-less listener
                return web.Response(status=403, text="forbidden: use a loopback address or localhost\n")
            if request.path.startswith("/api/") or request.path == "/metrics" or request.method != "GET":
                response = error(401, "unauthorized: send Authorization: Bearer <[admin] token>")
                response.headers["WWW-Authenticate"] = 'Bearer realm="relay"'
                return response
            return self.pages.render("login.html", status=401, next=request.path_qs, failed=False, signed_in=False)
        return await handler(request)

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = self._static.get(name)
        if body is None:
            body = _static_file(name)
            if body is None:
                return web.Response(status=404, text="not found\n")
            self._static[name] = body
        suffix = name[name.rfind("."):]
        response = web.Response(body=body, headers={"Content-Type": f"{STATIC_TYPES[suffix]}; charset=utf-8",
                                                    "Cache-Control": "max-age=3600",
                                                    "X-Content-Type-Options": "nosniff"})
        response.enable_compression()  # plotly.min.js: 4.8 MB, about 1.4 MB gzipped
        return response

    async def login_form(self, request: web.Request) -> web.Response:
        return self.pages.render("login.html", next=_local(request.query.get("next", "/")), failed=False,
                                 signed_in=False)

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        token, target = str(form.get("token", "")), _local(str(form.get("next", "/")))
        if not self.auth.check_token(token):
            log.warning("admin: failed sign-in from %s", request.remote)  # never the value tried
            return self.pages.render("login.html", status=401, next=target, failed=True, signed_in=False)
        response = web.HTTPSeeOther(target)
        self.auth.sign_in(response, secure=request.secure)
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        response = web.HTTPSeeOther("/login")
        self.auth.sign_out(response)
        return response


def _local(target: str) -> str:
    """Only a path on this listener: never an open redirect after sign-in."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def _static_file(name: str) -> bytes | None:
    if name == "plotly.min.js":
        # plotly.js as the plotly package ships it: served by relay, nothing from the internet.
        from plotly.offline import get_plotlyjs

        return get_plotlyjs().encode()
    if "/" in name or name.startswith(".") or name[name.rfind("."):] not in STATIC_TYPES:
        return None
    path = resources.files("relay.admin") / "static" / name
    return path.read_bytes() if path.is_file() else None
