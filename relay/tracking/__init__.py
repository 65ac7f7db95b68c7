# The tracking side: the HTTP server for pixels and redirects (server.py), its
# connection guard (connections.py) and the hit recorder (recorder.py).
from __future__ import annotations

from relay.tracking.server import PIXEL, TrackingServer

__all__ = ["PIXEL", "TrackingServer"]
