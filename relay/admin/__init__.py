# The admin listener: the JSON API, Prometheus /metrics and the dashboard, on their own
# port (never the public tracking listener), reading the store through relay.stats.
from __future__ import annotations

from relay.admin.server import AdminServer

__all__ = ["AdminServer"]
