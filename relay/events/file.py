# The `file` event destination: JSON Lines, one SES-format event per line,
# appended and flushed by one writer task (a thread does the blocking write).
from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from relay.events.bus import Event

log = logging.getLogger("relay.events")


class FileDestination:
    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.path = path
        self._lines: list[str] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def put(self, event: Event) -> None:
        self._lines.append(event.body + "\n")
        self._wake.set()

    async def start(self) -> None:
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        self._task = asyncio.create_task(self._run(), name=f"file-destination {self.name}")

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._lines:
                lines, self._lines = self._lines, []
                try:
                    await asyncio.to_thread(self._append, lines)
                except OSError as e:
                    # Keep the events and retry: a full disk must not lose them.
                    log.error("file destination %s: cannot write %s: %s", self.name, self.path, e)
                    self._lines[:0] = lines
                    if self._closing:
                        return
                    await asyncio.sleep(1.0)
                    self._wake.set()
                    continue
            if self._closing and not self._lines:
                return

    def _append(self, lines: list[str]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
