# A big BLOB (a 25 MB message) is committed like any value; the store then makes SQLite
# drop its own copy of it (a cached statement keeps its last bound values), which must
# neither undo the row nor anything else in the same commit.
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from relay.store import BIG_VALUE, Store

INSERT = "INSERT INTO settings(key, value) VALUES (?, ?)"


async def test_a_big_value_is_committed_whole_with_the_rest_of_its_batch(store: Store, tmp_path: Path) -> None:
    big = os.urandom(BIG_VALUE + 12345)
    await store.write([(INSERT, ("before", "1")), (INSERT, ("big", big)), (INSERT, ("after", "2"))])
    await store.write([(INSERT, ("small", b"x"))])  # the same statement again, bound anew
    with sqlite3.connect(tmp_path / "relay.db") as db:  # what another process would read
        rows = dict(db.execute("SELECT key, value FROM settings WHERE key IN ('before', 'big', 'after', 'small')"))
    assert rows == {"before": "1", "big": big, "after": "2", "small": b"x"}
