# The SQLite file: schema, and the single writer that group-commits. All SQL lives
# in this package: counting.py builds the read model's rows, reads.py queries them.
# Every write goes through Store.write(); concurrent callers are batched into one
# transaction and one fsync (WAL, synchronous=FULL), then each caller is released.
# The writer is a plain sqlite3 connection owned by one thread, so a whole batch
# costs one thread hop (aiosqlite would cost one per statement); reads use aiosqlite.
from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import secrets
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Sequence, TypeVar

import aiosqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,            -- relay's message id, the SES messageId
    accepted_at REAL NOT NULL,      -- unix seconds
    configuration_set TEXT,
    mail_from TEXT NOT NULL,
    data BLOB,                      -- what goes upstream; NULL once every recipient is final
    mail TEXT NOT NULL,             -- JSON of the events' MailInfo
    tracked INTEGER NOT NULL DEFAULT 0
);
-- A feedback report without relay's VERP token names the original by its Message-ID:.
CREATE INDEX IF NOT EXISTS messages_header_id ON messages(json_extract(mail, '$.common_headers.messageId'));
-- Bodies of 1 MB or more, kept apart so the body is its row's last column: SQLite then
-- stores a zeroblob() without building it in memory, and relay writes the body into it a
-- slice at a time (WRITE_BLOB). Bound as a parameter, a 25 MB message cost two more
-- whole copies inside SQLite (the bound value and the record). messages.data is NULL.
CREATE TABLE IF NOT EXISTS message_bodies (
    message_id TEXT PRIMARY KEY REFERENCES messages(id),
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS recipients (
    message_id TEXT NOT NULL REFERENCES messages(id),
    recipient TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',   -- pending | delivered | bounced
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_reply TEXT,
    PRIMARY KEY (message_id, recipient)
);
CREATE INDEX IF NOT EXISTS recipients_pending ON recipients(state, next_attempt_at);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    destination TEXT NOT NULL,               -- configuration_set/destination name
    configuration_set TEXT,
    message_id TEXT NOT NULL,
    recipient TEXT,
    event_type TEXT NOT NULL,                -- SES eventType, e.g. "Open"
    timestamp TEXT NOT NULL,                 -- ISO-8601 UTC, ms
    body TEXT NOT NULL                       -- the SES-format JSON record
);
CREATE INDEX IF NOT EXISTS events_message ON events(message_id, event_type);
CREATE INDEX IF NOT EXISTS events_recipient ON events(recipient, event_type);
CREATE INDEX IF NOT EXISTS events_type_time ON events(event_type, timestamp);
CREATE TABLE IF NOT EXISTS webhook_outbox (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    destination TEXT NOT NULL,               -- configuration_set/destination name
    body TEXT NOT NULL,                      -- what is POSTed
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL
    -- and COLUMNS below: message_id, refused_since, rejections
);
CREATE INDEX IF NOT EXISTS webhook_order ON webhook_outbox(destination, seq);
-- Events a webhook endpoint refused for [webhook] max_retry_seconds (or a 4xx, 3 times):
-- listed by `relay webhook dead-letters`, moved back to the outbox by `relay webhook replay`.
CREATE TABLE IF NOT EXISTS webhook_dead_letters (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    destination TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    refused_since REAL NOT NULL,             -- unix seconds of the first refusal
    dead_at REAL NOT NULL,
    reason TEXT NOT NULL                     -- the last refusal, e.g. "HTTP 500"
);
CREATE TABLE IF NOT EXISTS file_outbox (
    seq INTEGER PRIMARY KEY,
    destination TEXT NOT NULL,               -- configuration_set/destination name
    body TEXT NOT NULL                       -- one JSON Lines line, without the newline
);
CREATE INDEX IF NOT EXISTS file_order ON file_outbox(destination, seq);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- The read model (relay.store.counting writes it with every event, whatever the
-- configuration set's destinations; relay.store.reads queries it). '' = no set.
CREATE TABLE IF NOT EXISTS event_log (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    configuration_set TEXT NOT NULL,
    message_id TEXT NOT NULL,
    recipient TEXT,
    event_type TEXT NOT NULL,                -- SES eventType
    at REAL NOT NULL,                        -- unix seconds of the event's timestamp
    link TEXT,                               -- Click: the original URL
    body TEXT NOT NULL                       -- the SES-format JSON record
);
CREATE INDEX IF NOT EXISTS event_log_at ON event_log(at);
CREATE INDEX IF NOT EXISTS event_log_message ON event_log(message_id, seq);
CREATE INDEX IF NOT EXISTS event_log_recipient ON event_log(recipient, seq);
CREATE INDEX IF NOT EXISTS event_log_type ON event_log(event_type, at);
-- Counters per UTC hour, set and metric (a counts key, or recipients, uniqueOpen,
-- uniqueClick, deliveredOpenTracked, deliveredClickTracked): stats never read events.
CREATE TABLE IF NOT EXISTS stats_hourly (
    hour INTEGER NOT NULL, configuration_set TEXT NOT NULL, metric TEXT NOT NULL,
    count INTEGER NOT NULL, PRIMARY KEY (hour, configuration_set, metric)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stats_tags_hourly (
    hour INTEGER NOT NULL, configuration_set TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL,
    metric TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (name, value, hour, configuration_set, metric)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stats_links_hourly (
    hour INTEGER NOT NULL, configuration_set TEXT NOT NULL, link TEXT NOT NULL,
    clicks INTEGER NOT NULL, unique_clicks INTEGER NOT NULL,
    PRIMARY KEY (hour, configuration_set, link)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stats_link_tags_hourly (
    hour INTEGER NOT NULL, configuration_set TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL,
    clicks INTEGER NOT NULL, PRIMARY KEY (hour, configuration_set, name, value)) WITHOUT ROWID;
-- All-time totals (never pruned: Prometheus counters must not go down).
CREATE TABLE IF NOT EXISTS event_totals (
    configuration_set TEXT NOT NULL, event_type TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (configuration_set, event_type)) WITHOUT ROWID;
-- Who opened/clicked what, for unique counts; kept for the tracking window (ids sort by time).
CREATE TABLE IF NOT EXISTS engagement (
    message_id TEXT NOT NULL, recipient TEXT NOT NULL, opens INTEGER NOT NULL, clicks INTEGER NOT NULL,
    PRIMARY KEY (message_id, recipient)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS link_engagement (
    message_id TEXT NOT NULL, recipient TEXT NOT NULL, link TEXT NOT NULL,
    PRIMARY KEY (message_id, recipient, link)) WITHOUT ROWID;
-- The account suppression list (SES's): relay.store.suppression owns its SQL.
CREATE TABLE IF NOT EXISTS suppressed_addresses (
    address TEXT PRIMARY KEY,                -- lower-cased
    reason TEXT NOT NULL,                    -- BOUNCE | COMPLAINT
    last_update REAL NOT NULL,               -- unix seconds
    message_id TEXT                          -- the message that caused it; NULL when added by hand
) WITHOUT ROWID;
-- SES list management: a contact per (contact list, address), its topics' statuses.
CREATE TABLE IF NOT EXISTS contacts (
    contact_list TEXT NOT NULL, address TEXT NOT NULL,     -- address lower-cased
    unsubscribe_all INTEGER NOT NULL DEFAULT 0, last_update REAL NOT NULL,
    PRIMARY KEY (contact_list, address)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS contact_topics (
    contact_list TEXT NOT NULL, address TEXT NOT NULL, topic TEXT NOT NULL,
    status TEXT NOT NULL,                    -- OptIn | OptOut
    PRIMARY KEY (contact_list, address, topic)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS message_tags (
    message_id TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (name, value, message_id)) WITHOUT ROWID;
"""

# Columns added to a table after files were made with it: (table, column, definition),
# added by ALTER TABLE when missing; then what depends on them.
COLUMNS = (
    ("webhook_outbox", "message_id", "TEXT NOT NULL DEFAULT ''"),  # order is kept per message
    ("webhook_outbox", "refused_since", "REAL"),  # unix seconds of the first refusal, NULL if none
    ("webhook_outbox", "rejections", "INTEGER NOT NULL DEFAULT 0"),  # 4xx answers (other than 408, 429)
    # X-SES-LIST-MANAGEMENT-OPTIONS as accepted: relay.unsubscribe.ListManagement's JSON, or NULL.
    ("messages", "list_management", "TEXT"),
)
AFTER_COLUMNS = "CREATE INDEX IF NOT EXISTS webhook_message ON webhook_outbox(destination, message_id, seq);"

Statement = tuple[str, Sequence[Any]]
# Writes a big value into a row inserted with zeroblob(len) as its last column:
# (WRITE_BLOB, (table, column, key column, key, value)), a slice at a time.
WRITE_BLOB = "-- relay: write blob"
BLOB_SLICE = 1 << 20
T = TypeVar("T")


class Store:
    """One SQLite file; one writer connection with group commit, one reader connection."""

    def __init__(self, path: str, *, max_batch: int = 2000) -> None:
        self.path = path
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[list[Statement], asyncio.Future[None]]] = asyncio.Queue()
        self._writer: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._reader: aiosqlite.Connection | None = None
        self._quick: sqlite3.Connection | None = None  # lookup()'s, on the event loop's thread
        self._task: asyncio.Task[None] | None = None
        # Why the last commit failed (e.g. a read-only or full disk), None once one succeeds:
        # /healthz reports it, since every message gets 451 meanwhile.
        self.last_error: str | None = None
        self._recheck: asyncio.Future[None] | None = None

    async def open(self, *, readonly: bool = False) -> None:
        """Open the file; readonly: a reader beside a running `relay serve` (the CLI), which
        creates nothing, changes nothing and needs no write permission."""
        if readonly:
            uri = f"{pathlib.Path(os.path.abspath(self.path)).as_uri()}?mode=ro"
            self._reader = await aiosqlite.connect(uri, uri=True, isolation_level=None)
            await self._reader.execute("PRAGMA busy_timeout=5000")
            return
        self._create_file()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-store-writer")
        self._writer = await self._in_writer(self._connect)
        self._reader = await aiosqlite.connect(self.path, isolation_level=None)
        await self._reader.execute("PRAGMA busy_timeout=5000")
        self._task = asyncio.create_task(self._run(), name="store-writer")

    async def close(self) -> None:
        if self._task is not None:
            await self._queue.join()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        if self._quick is not None:
            self._quick.close()
            self._quick = None
        if self._writer is not None:
            await self._in_writer(self._writer.close)
            self._writer = None
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None

    async def write(self, statements: Iterable[Statement]) -> None:
        """Run the statements atomically; return once they are durably committed."""
        if self._task is None:
            raise RuntimeError("store is not open for writing")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((list(statements), fut))
        await fut

    async def recheck(self) -> str | None:
        """last_error, after trying a one-row write again when a commit has failed.

        Otherwise the error would stand until the next message or hit is committed,
        and a load balancer following /healthz routes none to an unhealthy server.
        Concurrent callers share one attempt; a healthy store costs nothing.
        """
        if self.last_error is None:
            return None
        if self._recheck is None or self._recheck.done():
            self._recheck = asyncio.ensure_future(self.write([(
                "INSERT INTO settings(key, value) VALUES ('storage_checked_at', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (str(time.time()),))]))
            self._recheck.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved
        with contextlib.suppress(Exception):
            await asyncio.shield(self._recheck)
        return self.last_error

    def write_nowait(self, statements: Iterable[Statement]) -> asyncio.Future[None]:
        """Queue the statements; the returned future completes at commit."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((list(statements), fut))
        return fut

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        assert self._reader is not None, "store is not open"
        async with self._reader.execute(sql, params) as cur:
            return [tuple(row) for row in await cur.fetchall()]

    async def lookup(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A query by key on the hot path (say, the suppression list per delivery attempt):
        run on the caller's thread, as it takes microseconds, where fetchall()'s hop to
        aiosqlite's thread cost ~8% of relay's CPU per message. In WAL mode a reader does
        not wait for writers; should the file be busy all the same, fetchall() answers."""
        if self._quick is None:
            uri = f"{pathlib.Path(os.path.abspath(self.path)).as_uri()}?mode=ro"
            self._quick = sqlite3.connect(uri, uri=True, isolation_level=None)
            self._quick.execute("PRAGMA busy_timeout=0")
        try:
            return self._quick.execute(sql, params).fetchall()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e):
                raise
        return await self.fetchall(sql, params)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def get_setting(self, key: str) -> str | None:
        row = await self.fetchone("SELECT value FROM settings WHERE key = ?", (key,))
        return str(row[0]) if row else None

    async def setting(self, key: str, make: Any) -> str:
        """A persistent setting, created once with make() (e.g. the token secret)."""
        found = await self.get_setting(key)
        if found is not None:
            return found
        await self.write([("INSERT OR IGNORE INTO settings(key, value) VALUES (?, ?)", (key, make()))])
        row = await self.fetchone("SELECT value FROM settings WHERE key = ?", (key,))
        assert row is not None
        return str(row[0])

    def _create_file(self) -> None:
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        # The file holds every spooled message and the token secret: owner only. SQLite
        # gives the -wal and -shm files the database file's mode; files from before
        # this rule are tightened too.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        for path in (self.path, f"{self.path}-wal", f"{self.path}-shm"):
            with contextlib.suppress(OSError):  # absent, or not ours to change
                if os.stat(path).st_mode & 0o077:
                    os.chmod(path, 0o600)

    def prepare(self) -> None:
        """Create the file and its schema, synchronously (before serving processes fork,
        so none of them races another to create it)."""
        self._create_file()
        self._connect().close()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsync'd at every commit, so a 250 reply survives power loss.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(SCHEMA)
        for table, column, definition in COLUMNS:
            if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        db.executescript(AFTER_COLUMNS)
        db.execute("PRAGMA busy_timeout=0")  # transactions wait in _begin() instead
        return db

    async def _in_writer(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                try:
                    results = await self._in_writer(self._commit_batch, [stmts for stmts, _ in batch])
                except Exception as e:  # noqa: BLE001 - e.g. the disk is gone: everyone hears
                    results = [e] * len(batch)
                # One caller's bad statement is its own problem; the store is unwell only
                # when nothing could be committed.
                if any(err is None for err in results):
                    self.last_error = None
                else:
                    self.last_error = f"{type(results[0]).__name__}: {results[0]}"
                for (_, fut), err in zip(batch, results, strict=True):
                    if not fut.done():
                        if err is None:
                            fut.set_result(None)
                        else:
                            fut.set_exception(err)
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _commit_batch(self, batches: list[list[Statement]]) -> list[BaseException | None]:
        """In the writer thread: one transaction for all; on error, each caller alone."""
        try:
            self._commit([s for stmts in batches for s in stmts])
            return [None] * len(batches)
        except sqlite3.Error:
            pass
        # One caller's bad statement must not fail the others that shared the commit:
        # replay each caller alone and tell each its own result.
        results: list[BaseException | None] = []
        for stmts in batches:
            try:
                self._commit(stmts)
                results.append(None)
            except sqlite3.Error as e:
                results.append(e)
        return results

    def _commit(self, statements: list[Statement]) -> None:
        assert self._writer is not None
        db = self._writer
        _begin(db)
        try:
            for sql, params in statements:
                if sql == WRITE_BLOB:
                    _write_blob(db, *params)
                    continue
                db.execute(sql, params)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise


def _write_blob(db: sqlite3.Connection, table: str, column: str, key_column: str, key: Any, value: bytes) -> None:
    row = db.execute(f"SELECT rowid FROM {table} WHERE {key_column} = ?", (key,)).fetchone()
    if row is None:
        raise sqlite3.IntegrityError(f"no {table} row {key!r} to write {column} into")
    view = memoryview(value)
    with db.blobopen(table, column, row[0]) as blob:
        for at in range(0, len(view), BLOB_SLICE):
            blob.write(view[at:at + BLOB_SLICE])


def _begin(db: sqlite3.Connection, patience: float = 10.0) -> None:
    """BEGIN IMMEDIATE, waiting for another process's write transaction to end.

    SQLite's own busy handler sleeps 1, 2, 5, 10 … 100 ms between tries, far longer than
    a group commit holds the lock (~1 ms with its fsync); with several serving processes
    that sleep, not the disk, would set the pace. So the writer's busy timeout is 0 and
    this retries after 0.2 ms, doubling to 5 ms.
    """
    deadline = time.monotonic() + patience
    pause = 0.0002
    while True:
        try:
            db.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e):
                raise
            if time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.005)


def new_secret() -> str:
    return secrets.token_urlsafe(32)
