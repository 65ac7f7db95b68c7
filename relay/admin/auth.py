# Who may use the admin listener. With [admin] token: "Authorization: Bearer <token>"
# or the login form's cookie (HttpOnly, SameSite=Strict, so no other site can make the
# browser use it). Without one (loopback only, config.py enforces it): anyone on this
# host, but only under a loopback Host name, against DNS rebinding from a web page.
from __future__ import annotations

import hashlib
import hmac
import ipaddress

from aiohttp import web

COOKIE = "relay_admin"
_COOKIE_NS = b"relay.admin.cookie.v1"


class Auth:
    def __init__(self, token: str | None) -> None:
        self.required = token is not None
        self._token = (token or "").encode()
        # The cookie holds a value derived from the token, not the token itself.
        self._cookie = hmac.new(self._token, _COOKIE_NS, hashlib.sha256).hexdigest() if token else ""

    def check_token(self, given: str) -> bool:
        return self.required and hmac.compare_digest(given.encode(), self._token)

    def allowed(self, request: web.Request) -> bool:
        if not self.required:
            return loopback_host(request.host)
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.check_token(value.strip()):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self._cookie.encode())

    def sign_in(self, response: web.StreamResponse, *, secure: bool) -> None:
        response.set_cookie(COOKIE, self._cookie, httponly=True, samesite="Strict", secure=secure, path="/")

    def sign_out(self, response: web.StreamResponse) -> None:
        response.del_cookie(COOKIE, path="/")


def loopback_host(host: str) -> bool:
    """Whether a Host header names this machine: localhost or a loopback address, any port."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
