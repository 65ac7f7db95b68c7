# What relay forgets, and when: finished messages after the tracking window, their
# bodies after [storage] body_retention_days, raw events after retention_days and the
# hourly counters after stats_retention_days. Run hourly by `relay serve` and on demand
# by `relay prune`.
from __future__ import annotations

from relay.config import Config
from relay.spool import Spool
from relay.store import Store, counting

DAY = 86400.0


async def prune(store: Store, config: Config, *, now: float) -> None:
    storage = config.storage
    await Spool(store).prune(now - config.tracking.window_days * DAY,
                             bodies_before=now - storage.body_retention_days * DAY)
    await store.write(counting.prune_statements(events_before=now - storage.retention_days * DAY,
                                                stats_before=now - storage.stats_retention_days * DAY))
