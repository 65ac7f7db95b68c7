# Big values: a body of 1 MB or more is written into its own row a slice at a time (no
# whole copies inside SQLite); a big value bound as a parameter still commits whole.
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from relay.store import BLOB_SLICE, Store

INSERT = "INSERT INTO settings(key, value) VALUES (?, ?)"


async def test_a_big_value_is_committed_whole_with_the_rest_of_its_batch(store: Store, tmp_path: Path) -> None:
    big = os.urandom(BLOB_SLICE + 12345)
    await store.write([(INSERT, ("before", "1")), (INSERT, ("big", big)), (INSERT, ("after", "2"))])
    await store.write([(INSERT, ("small", b"x"))])  # the same statement again, bound anew
    with sqlite3.connect(tmp_path / "relay.db") as db:  # what another process would read
        rows = dict(db.execute("SELECT key, value FROM settings WHERE key IN ('before', 'big', 'after', 'small')"))
    assert rows == {"before": "1", "big": big, "after": "2", "small": b"x"}



async def test_a_big_body_is_written_in_slices_and_reads_back_whole(store: Store, tmp_path: Path) -> None:
    import time
    from datetime import UTC, datetime

    from relay.events.records import MailInfo
    from relay.spool import Job, Spool, put_statements, result_statements
    from relay.store import BLOB_SLICE, WRITE_BLOB
    from relay.store.reads import message_body

    body = b"Subject: big\r\n\r\n" + os.urandom(3 * BLOB_SLICE + 777)
    mail = MailInfo(message_id="m-big", timestamp=datetime.now(UTC), source="a@x.test", destination=("b@x.test",),
                    headers=(), headers_truncated=False, common_headers={"messageId": "<big@x.test>"}, tags={})
    job = Job(message_id="m-big", accepted_at=time.time(), configuration_set=None, mail_from="a@x.test",
              mail=mail, tracked=False, attempts={"b@x.test": 0}, due=0.0, data=body)
    stmts = put_statements(job)
    assert [sql for sql, _ in stmts if sql == WRITE_BLOB] == [WRITE_BLOB]
    assert all(body not in params for sql, params in stmts if sql != WRITE_BLOB)  # never bound whole
    spool = Spool(store)
    await spool.put(job)
    assert await spool.load_data("m-big") == body
    assert await message_body(store, "m-big") == body  # the admin preview reads it too
    assert await spool.by_header_message_id("<big@x.test>") == "m-big"
    await spool.write(result_statements("m-big", delivered=[("b@x.test", "250 ok")], finished=True))
    assert await spool.load_data("m-big") is None  # every recipient final: the body is gone
    with sqlite3.connect(tmp_path / "relay.db") as db:
        assert db.execute("SELECT COUNT(*) FROM message_bodies").fetchone() == (0,)


async def test_small_bodies_stay_inline(store: Store) -> None:
    import time
    from datetime import UTC, datetime

    from relay.events.records import MailInfo
    from relay.spool import Job, put_statements
    from relay.store import WRITE_BLOB

    mail = MailInfo(message_id="m-small", timestamp=datetime.now(UTC), source="", destination=("b@x.test",),
                    headers=(), headers_truncated=False, common_headers={}, tags={})
    job = Job(message_id="m-small", accepted_at=time.time(), configuration_set=None, mail_from="",
              mail=mail, tracked=False, attempts={"b@x.test": 0}, due=0.0, data=b"Subject: s\r\n\r\nhi\r\n")
    stmts = put_statements(job)
    assert len(stmts) == 2 and WRITE_BLOB not in (sql for sql, _ in stmts) and job.data in stmts[0][1]


async def test_a_blob_for_a_missing_row_fails_only_its_own_batch(store: Store, tmp_path: Path) -> None:
    import asyncio

    from relay.store import WRITE_BLOB
    bad = [(INSERT, ("lost", "1")), (WRITE_BLOB, ("message_bodies", "data", "message_id", "nope", b"x" * 10))]
    good = [(INSERT, ("kept", "2"))]
    results = await asyncio.gather(store.write(bad), store.write(good), return_exceptions=True)
    assert isinstance(results[0], sqlite3.IntegrityError) and results[1] is None
    with sqlite3.connect(tmp_path / "relay.db") as db:
        rows = dict(db.execute("SELECT key, value FROM settings WHERE key IN ('lost', 'kept')"))
    assert rows == {"kept": "2"}
