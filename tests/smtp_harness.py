# Helpers for the tests/test_smtp_*.py files: relay's App in the test's loop on
# loopback ports, and a raw-socket SMTP client that can send what smtplib would
# not (control characters, bare LF, stalls). Every wait is bounded.
from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from relay import config as cfg
from relay.app import App
from tests.support import free_port


def make_config(tmp_path: Path, **smtp: Any) -> cfg.Config:
    return cfg.parse({
        "smtp": {"listen": f"127.0.0.1:{free_port()}", **smtp},
        "tracking": {"listen": f"127.0.0.1:{free_port()}"},
        "storage": {"path": str(tmp_path / "relay.db")},
        "upstream": {"url": f"maildir:{tmp_path / 'outbox'}"},
    })


@contextlib.asynccontextmanager
async def running(tmp_path: Path, **smtp: Any) -> AsyncIterator[App]:
    app = App(make_config(tmp_path, **smtp))
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


def spooled(app: App) -> list[bytes]:
    """The message bytes committed to the spool, oldest first."""
    con = sqlite3.connect(app.config.storage.path, timeout=10)
    try:
        return [bytes(r[0]) for r in con.execute("SELECT data FROM messages ORDER BY accepted_at")]
    finally:
        con.close()


class Client:
    """A raw SMTP client: send lines or bytes, read whole (multi-line) replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, source: str = "127.0.0.1") -> "Client":
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 10)
        return cls(reader, writer)

    async def reply(self, timeout: float = 10) -> str:
        """The next reply, its lines joined by '\\n'; '' when the server closed the connection."""
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), timeout)
            if not line:
                return "\n".join(lines)
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                return "\n".join(lines)

    async def send(self, data: bytes | str) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)
        await self.writer.drain()

    async def cmd(self, line: bytes | str, timeout: float = 10) -> str:
        await self.send((line.encode("utf-8", "surrogateescape") if isinstance(line, str) else line) + b"\r\n")
        return await self.reply(timeout)

    async def closed(self, timeout: float = 10) -> bool:
        """Whether the server closed the connection (EOF) within the timeout."""
        try:
            while await asyncio.wait_for(self.reader.read(4096), timeout):
                pass
            return True
        except ConnectionResetError:
            return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def session(port: int, source: str = "127.0.0.1") -> Client:
    """Connected, greeted (220) and EHLO'd."""
    c = await Client.connect(port, source)
    greeting = await c.reply()
    assert greeting.startswith("220"), greeting
    assert (await c.cmd("EHLO client.test")).startswith("250")
    return c


async def until(predicate: Any, timeout: float = 5.0, interval: float = 0.05) -> None:
    """Await an async predicate until it is true; bounded."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
