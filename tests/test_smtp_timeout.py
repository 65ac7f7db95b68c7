# [smtp] timeout is an idle timeout per read (RFC 5321 §4.5.3.2, Postfix
# smtpd_timeout), in DATA too: a slow but steady upload is not cut, a stalled
# session gets 421 and is closed.
from __future__ import annotations

import asyncio
from pathlib import Path

from tests.smtp_harness import running, session, spooled

TIMEOUT_REPLY = "421 4.4.2 relay.localhost Error: timeout exceeded"


async def test_slow_steady_data_longer_than_timeout_is_accepted(tmp_path: Path) -> None:
    async with running(tmp_path, timeout=1.0) as app:
        c = await session(app.config.smtp.listen.port)
        async with c:
            assert (await c.cmd("MAIL FROM:<a@example.com>")).startswith("250")
            assert (await c.cmd("RCPT TO:<b@example.org>")).startswith("250")
            assert (await c.cmd("DATA")).startswith("354")
            await c.send("Subject: slow\r\n\r\n")
            for i in range(12):  # ~2.4 s in all, well past the timeout, never idle that long
                await asyncio.sleep(0.2)
                await c.send(f"line {i}\r\n")
            assert (await c.cmd(".")).startswith("250")
        assert b"line 11\r\n" in spooled(app)[0]


async def test_stalled_data_is_cut_with_421(tmp_path: Path) -> None:
    async with running(tmp_path, timeout=0.5) as app:
        c = await session(app.config.smtp.listen.port)
        async with c:
            assert (await c.cmd("MAIL FROM:<a@example.com>")).startswith("250")
            assert (await c.cmd("RCPT TO:<b@example.org>")).startswith("250")
            assert (await c.cmd("DATA")).startswith("354")
            await c.send("Subject: stalled\r\n\r\npart")
            assert await c.reply(5) == TIMEOUT_REPLY
            assert await c.closed()
        assert spooled(app) == []


async def test_idle_session_gets_421(tmp_path: Path) -> None:
    async with running(tmp_path, timeout=0.5) as app:
        c = await session(app.config.smtp.listen.port)
        async with c:
            assert await c.reply(5) == TIMEOUT_REPLY
            assert await c.closed()
