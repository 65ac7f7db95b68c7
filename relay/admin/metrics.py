# GET /metrics in the Prometheus text format. What the store holds (event totals, the
# queue, the webhook outbox) is read at scrape time, so it is right whichever process
# of several is scraped; what only a process sees (SMTP transactions, attempt times,
# tracking hits) comes from its relay.metrics.Metrics.
from __future__ import annotations

from collections.abc import Iterator, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from relay import stats
from relay.config import Config
from relay.metrics import Metrics
from relay.store import Store

QUEUE_STATES = ("pending", "delivered", "bounced")
# Mail sent without a configuration set has configuration_set="" (stats.NO_SET).


class StoreSnapshot:
    """A collector over values read from the store just before the scrape is rendered."""

    def __init__(self, *, events: Mapping[tuple[str, str], int], queue: Mapping[str, int],
                 outbox: Mapping[str, int], dead_letters: Mapping[str, int] | None = None) -> None:
        self._events, self._queue, self._outbox = events, queue, outbox
        self._dead = dead_letters or {}

    def collect(self) -> Iterator[Metric]:
        events = CounterMetricFamily("relay_events", "Events relay produced, all processes, since the store began",
                                     labels=["configuration_set", "event_type"])
        for (cset, event_type), n in sorted(self._events.items(), key=lambda kv: kv[0]):
            events.add_metric([cset, event_type], n)
        yield events
        queue = GaugeMetricFamily("relay_queue_recipients", "Recipients in the spool by state",
                                  labels=["state"])
        for state in sorted(set(QUEUE_STATES) | set(self._queue)):
            queue.add_metric([state], self._queue.get(state, 0))
        yield queue
        outbox = GaugeMetricFamily("relay_webhook_outbox", "Events waiting to be posted, by webhook destination",
                                   labels=["destination"])
        for dest in sorted(self._outbox):
            outbox.add_metric([dest], self._outbox[dest])
        yield outbox
        dead = GaugeMetricFamily("relay_webhook_dead_letters", "Events an endpoint never took, by webhook "
                                 "destination (relay webhook replay re-queues them)", labels=["destination"])
        for dest in sorted(set(self._outbox) | set(self._dead)):
            dead.add_metric([dest], self._dead.get(dest, 0))
        yield dead


class MetricsEndpoint:
    def __init__(self, *, config: Config, store: Store, metrics: Metrics) -> None:
        self._config = config
        self._store = store
        self._metrics = metrics

    def register(self, app: web.Application) -> None:
        app.router.add_get("/metrics", self.scrape)

    async def scrape(self, request: web.Request) -> web.Response:
        # Every configured webhook destination appears, 0 when its outbox is empty.
        outbox = {f"{cset.name}/{d.name}": 0 for cset in self._config.configuration_sets.values()
                  for d in cset.event_destinations if d.type == "webhook"}
        outbox.update(await stats.webhook_outbox(self._store))
        totals = {(cset, event_type): n for cset, event_type, n in await stats.totals(self._store)}
        snapshot = StoreSnapshot(events=totals, queue=await stats.queue(self._store), outbox=outbox,
                                 dead_letters=await stats.webhook_dead_letters(self._store))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(snapshot)
        registry.register(self._metrics)
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST,
                                                                     "Cache-Control": "no-store"})
