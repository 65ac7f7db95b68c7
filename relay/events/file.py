# The `file` event destination: JSON Lines, one SES-format event per line. Events
# wait in the file_outbox table (committed with the state change they report); one
# writer task appends them in order, fsyncs, then deletes them from the outbox, so a
# full disk delays events and a crash at worst repeats the last lines, never loses one.
from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from relay.events.bus import Event
from relay.limits import LogThrottle
from relay.store import Statement, Store

log = logging.getLogger("relay.events")

INSERT = "INSERT INTO file_outbox(destination, body) VALUES (?, ?)"
HEAD = "SELECT seq, body FROM file_outbox WHERE destination = ? ORDER BY seq LIMIT ?"
DONE = "DELETE FROM file_outbox WHERE destination = ? AND seq <= ?"
BATCH = 1000  # lines per append


class FileDestination:
    def __init__(self, name: str, path: str, store: Store, *, retry_delay: float = 1.0,
                 close_grace: float = 5.0) -> None:
        self.name = name
        self.path = path
        self._store = store
        self._retry_delay = retry_delay
        self._close_grace = close_grace
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._throttle = LogThrottle(60.0)

    def statements(self, event: Event) -> list[Statement]:
        return [(INSERT, (self.name, event.body))]

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        # Whatever an earlier run left in the outbox is written first.
        self._task = asyncio.create_task(self._run(), name=f"file-destination {self.name}")

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, self._close_grace)
            except TimeoutError:
                pass  # unwritten rows stay in the outbox for the next start
            self._task = None

    async def _run(self) -> None:
        while True:
            self._wake.clear()  # before the read, so a commit during it is not missed
            try:
                rows = await self._store.fetchall(HEAD, (self.name, BATCH))
                if rows:
                    await asyncio.to_thread(self._append, [body + "\n" for _, body in rows])
                    await self._store.write([(DONE, (self.name, rows[-1][0]))])
                    continue
            except Exception as e:  # noqa: BLE001 - e.g. a full disk: keep the rows, retry
                if self._throttle.should_log("write"):
                    log.error("file destination %s: cannot write %s (%s); retrying", self.name, self.path, e)
                if self._closing:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._retry_delay)
                continue
            if self._closing:
                return
            await self._wake.wait()

    def _append(self, lines: list[str]) -> None:
        # The events name recipients and subjects: a new file is the owner's only, as the
        # storage file is (an existing file keeps the mode its owner gave it).
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with open(fd, "a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())  # the rows are deleted next: the lines must be on disk first
