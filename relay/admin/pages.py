# The dashboard's HTML pages, from jinja2 templates: the overview (per set and period,
# charts, top links, searchable messages), a message's per-recipient timeline with a
# live refresh, the preview of the copy one recipient received, and the account
# suppression list.
from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web

from relay import stats
from relay.admin import params, preview, timeline
from relay.admin.api import now_utc
from relay.admin.preview import Copy
from relay.config import Config
from relay.store import Store, suppression
from relay.tokens import Signer

PERIODS = (("24h", "Last 24 hours"), ("7d", "Last 7 days"), ("30d", "Last 30 days"))
# What the chart draws, in the order of the sending pipeline (SES console colours).
CHART = (("send", "Sends", "#2563eb"), ("delivery", "Deliveries", "#16a34a"), ("bounce", "Bounces", "#dc2626"),
         ("open", "Opens", "#0891b2"), ("click", "Clicks", "#7c3aed"))
CARDS = (("send", "Sends"), ("delivery", "Deliveries"), ("bounce", "Bounces"), ("deliveryDelay", "Delays"),
         ("complaint", "Complaints"), ("reject", "Rejects"), ("open", "Opens"), ("click", "Clicks"))
CARD_RATES = {"delivery": "delivery", "bounce": "bounce", "complaint": "complaint", "open": "open", "click": "click"}
# Pages: scripts only from relay itself (plotly injects its own <style>s); the preview
# is framed from here only.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "frame-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
# The preview runs no script and submits nothing, whatever the mail holds; links open
# outside the sandbox. Remote images (the pixel among them) only on request.
PREVIEW_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data: cid:{images}; font-src data:; "
               "form-action 'none'; frame-ancestors 'self'; sandbox allow-popups allow-popups-to-escape-sandbox")
PAGE_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
_URL = re.compile(r"https?://[^\s<>\"']+")
_MAX_SCAN = 100
BIG_BODY = 64 * 1024
SUPPRESSION_PAGE = 500  # addresses shown at once; a search narrows


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("relay.admin", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["when"] = when
    return env


def when(value: str) -> str:
    """An ISO-8601 UTC time as people read it in a table: "2026-11-29 20:31:30.654"."""
    return value.replace("T", " ").removesuffix("Z").removesuffix("+00:00")


class Pages:
    def __init__(self, *, config: Config, store: Store, signer: Signer, auth_required: bool,
                 clock: Callable[[], datetime] = now_utc) -> None:
        self._config = config
        self._store = store
        self._signer = signer
        self._auth_required = auth_required
        self._clock = clock
        self.env = environment()

    def register(self, app: web.Application) -> None:
        app.router.add_get("/", self.dashboard)
        app.router.add_get("/messages/{id}", self.message)
        app.router.add_get("/messages/{id}/timeline", self.timeline)
        app.router.add_get("/messages/{id}/preview/{index:\\d+}", self.preview)
        app.router.add_get("/suppression", self.suppression_list)

    def render(self, name: str, *, status: int = 200, csp: str = PAGE_CSP, **context: Any) -> web.Response:
        context.setdefault("signed_in", self._auth_required)  # offers "Sign out"
        html = self.env.get_template(name).render(**context)
        return web.Response(text=html, status=status, content_type="text/html",
                            headers={**PAGE_HEADERS, "Content-Security-Policy": csp})

    def error(self, status: int, message: str) -> web.Response:
        return self.render("error.html", status=status, status_text=status, message=message)

    # --- the overview ---------------------------------------------------------------

    async def dashboard(self, request: web.Request) -> web.Response:
        q = request.query
        now = self._clock()
        try:
            params.known(q, {"configuration_set", "since", "until", "q", "tag"})
            cset = params.configuration_set(q)
            since = q.get("since") or "7d"
            period = params.period({**q, "since": since}, now)
            tag = params.tag(q)
        except params.ParamError as e:
            return self.error(400, str(e))
        # Hours for up to two days, else days: a readable number of points either way.
        by = "hour" if period.until - period.since <= timedelta(days=2) else "day"
        doc = await stats.stats(self._store, configuration_set=cset, period=period, by=by, tag=tag)
        per_set = []
        for key, label in self._set_keys():
            row_doc = doc if key == cset else await stats.stats(self._store, configuration_set=key, period=period,
                                                                 tag=tag)
            per_set.append({"label": label, "doc": row_doc, "url": self._url(key, since)})
        search = q.get("q", "").strip()
        messages = await stats.messages(self._store, period=period, configuration_set=cset,
                                        search=search or None, limit=50)
        cards = [{"key": "recipients", "label": "Recipients", "value": doc["recipients"]}]
        for key, label in CARDS:
            card: dict[str, Any] = {"key": key, "label": label, "value": doc["counts"][key]}
            if key in CARD_RATES:
                card["rate"] = doc["rates"][CARD_RATES[key]]
            cards.append(card)
        cards += [{"key": "uniqueOpen", "label": "Unique opens", "value": doc["unique"]["open"]},
                  {"key": "uniqueClick", "label": "Unique clicks", "value": doc["unique"]["click"]}]
        series = doc.get("series", [])
        chart = {"x": [b["start"] for b in series],
                 "series": [{"key": key, "name": name, "color": color, "y": [b["counts"][key] for b in series]}
                            for key, name, color in CHART]}
        labels = dict(self._set_keys())
        return self.render(
            "dashboard.html", doc=doc, cards=cards, chart=chart, by=by, per_set=per_set, messages=messages,
            q=search, since=since, configuration_set=cset, set_label=labels.get(cset, cset or "(no set)"),
            set_choices=[{"label": label, "url": self._url(key, since), "chosen": key == cset}
                         for key, label in self._set_keys()],
            period_choices=[{"label": label, "url": self._url(cset, value), "chosen": value == since}
                            for value, label in PERIODS])

    def _set_keys(self) -> list[tuple[str | None, str]]:
        return [(None, "All"), *((name, name) for name in self._config.configuration_sets), (stats.NO_SET, "(no set)")]

    @staticmethod
    def _url(cset: str | None, since: str) -> str:
        query = {} if cset is None else {"configuration_set": cset}
        return "/?" + urlencode({**query, "since": since})

    # --- the suppression list ------------------------------------------------------

    async def suppression_list(self, request: web.Request) -> web.Response:
        try:
            params.known(request.query, {"q"})
        except params.ParamError as e:
            return self.error(400, str(e))
        search = request.query.get("q", "").strip()
        found = await suppression.entries(self._store, limit=SUPPRESSION_PAGE, search=search or None)
        return self.render("suppression.html", entries=[e.as_json() for e in found], q=search,
                           total=await suppression.count(self._store), limit=SUPPRESSION_PAGE)

    # --- one message ------------------------------------------------------------------

    async def message(self, request: web.Request) -> web.Response:
        message_id = request.match_info["id"]
        doc = await stats.message(self._store, message_id)
        if doc is None:
            return self.error(404, f"relay knows no message {message_id!r} (or it was pruned)")
        mail = doc["message"]
        destination = list(mail.get("destination", []))
        try:
            params.known(request.query, {"r", "images"})
            chosen = params.integer(request.query, "r", 0, maximum=max(len(destination) - 1, 0))
        except params.ParamError as e:
            return self.error(400, str(e))
        images = request.query.get("images") == "1"
        body = await stats.message_body(self._store, message_id)
        preview_url = no_preview = None
        if body is None:
            no_preview = "The body is no longer kept ([storage] body_retention_days)."
        elif not destination:
            no_preview = "The message has no recipients."
        else:
            preview_url = f"/messages/{message_id}/preview/{chosen}" + ("?images=1" if images else "")
        headers = mail.get("commonHeaders", {})
        tags = sorted((k, v) for k, v in mail.get("tags", {}).items() if not k.startswith("ses:"))
        cset = (mail.get("tags", {}).get("ses:configuration-set") or [None])[0]
        return self.render(
            "message.html", mail=mail, subject=headers.get("subject") or "(no subject)", tags=tags,
            configuration_set=cset, recipients=self._recipients(doc), after=await self._last_seq(message_id),
            chosen=chosen, chosen_address=destination[chosen] if destination else "", images=images,
            preview_url=preview_url, no_preview=no_preview)

    async def timeline(self, request: web.Request) -> web.Response:
        """The live feed: {"after": seq} when nothing is new, else also the re-rendered timeline."""
        message_id = request.match_info["id"]
        try:
            after = params.integer(request.query, "after", 0, maximum=2**62)
        except params.ParamError as e:
            return web.json_response({"error": str(e)}, status=400)
        last = await self._last_seq(message_id, after)
        if last == after:
            return web.json_response({"after": after}, headers={"Cache-Control": "no-store"})
        doc = await stats.message(self._store, message_id)
        if doc is None:
            return web.json_response({"error": "no such message"}, status=404)
        html = self.env.get_template("_timeline.html").render(recipients=self._recipients(doc))
        return web.json_response({"after": last, "html": html}, headers={"Cache-Control": "no-store"})

    async def _last_seq(self, message_id: str, after: int = 0) -> int:
        # Paged, since events() returns at most `limit` at a time.
        for _ in range(_MAX_SCAN):
            found = await stats.events(self._store, message_id=message_id, after_seq=after, limit=1000)
            if not found:
                break
            after = found[-1][0]
        return after

    @staticmethod
    def _recipients(doc: dict[str, Any]) -> list[dict[str, Any]]:
        destination = list(doc["message"].get("destination", []))
        return [{"address": r["address"], "state": r["state"],
                 "index": destination.index(r["address"]) if r["address"] in destination else None,
                 "rows": [timeline.row(e) for e in r["events"]]} for r in doc["recipients"]]

    async def preview(self, request: web.Request) -> web.Response:
        message_id = request.match_info["id"]
        index = int(request.match_info["index"])
        doc = await stats.message(self._store, message_id)
        body = await stats.message_body(self._store, message_id) if doc is not None else None
        if doc is None or body is None or index >= len(doc["message"].get("destination", [])):
            return web.Response(status=404, text="not found\n", headers=PAGE_HEADERS)
        if len(body) > BIG_BODY:  # like delivery: a large newsletter is parsed off the event loop
            copy = await asyncio.to_thread(self._copy, body, doc["message"], index)
        else:
            copy = self._copy(body, doc["message"], index)
        images = " http: https:" if request.query.get("images") == "1" else ""
        csp = PREVIEW_CSP.format(images=images)
        if copy.html is not None:
            return web.Response(text=preview.open_links_outside(copy.html), content_type="text/html",
                                headers={**PAGE_HEADERS, "Content-Security-Policy": csp})
        return self.render("preview_text.html", csp=csp, runs=_runs(copy.text or ""))


    def _copy(self, body: bytes, mail: dict[str, Any], index: int) -> Copy:
        raw = preview.recipient_copy(body, mail, index, config=self._config, signer=self._signer)
        return preview.body_parts(raw)


def _runs(text: str) -> list[tuple[bool, str]]:
    """Plain text cut into (is_link, text) runs, so its URLs are clickable in the preview."""
    out: list[tuple[bool, str]] = []
    position = 0
    for m in _URL.finditer(text):
        out += [(False, text[position:m.start()]), (True, m.group())]
        position = m.end()
    return [*out, (False, text[position:])]
