# DATA: the bytes held in memory across sessions are capped ([smtp]
# max_concurrent_data_bytes); a reservation taken at MAIL is given back on every
# path that ends the transaction; bare-LF lines are lines, not one long line.
from __future__ import annotations

from pathlib import Path

import pytest

from relay import config as cfg
from relay.errors import ConfigError
from tests.smtp_harness import Client, running, session, spooled, until

NO_ROOM = "451 4.3.1 Insufficient system storage, try again later"
LIMITS = {"max_message_size": 60_000, "max_concurrent_data_bytes": 100_000}


async def mail(c: Client, size: int | None = None) -> str:
    return await c.cmd("MAIL FROM:<a@example.com>" + (f" SIZE={size}" if size else ""))


async def send_data(c: Client, body: bytes) -> str:
    assert (await c.cmd("RCPT TO:<b@example.org>")).startswith("250")
    assert (await c.cmd("DATA")).startswith("354")
    await c.send(body)
    return await c.cmd(".")


@pytest.mark.parametrize("ending", ["RSET", "QUIT", "disconnect", "EHLO", "DATA"])
async def test_reservation_refuses_then_is_released(tmp_path: Path, ending: str) -> None:
    async with running(tmp_path, **LIMITS) as app:
        port = app.config.smtp.listen.port
        a, b = await session(port), await session(port)
        try:
            assert (await mail(a, 60_000)).startswith("250")
            assert await mail(b, 60_000) == NO_ROOM
            assert (await mail(b, 30_000)).startswith("250")  # what is free is still usable
            assert (await b.cmd("RSET")).startswith("250")
            if ending == "DATA":
                assert (await send_data(a, b"Subject: x\r\n\r\n" + b"y" * 70 + b"\r\n")).startswith("250")
            elif ending == "disconnect":
                await a.close()
            elif ending == "QUIT":
                assert (await a.cmd("QUIT")).startswith("221")
            else:
                assert (await a.cmd(ending if ending == "RSET" else "EHLO again.test")).startswith("250")

            async def fits() -> bool:
                reply = await mail(b, 60_000)
                return reply.startswith("250") or not (await b.cmd("RSET")).startswith("250")
            await until(fits)
        finally:
            await a.close()
            await b.close()


async def test_without_size_data_beyond_what_is_free_gets_451_after_the_dot(tmp_path: Path) -> None:
    async with running(tmp_path, **LIMITS) as app:
        port = app.config.smtp.listen.port
        a, b = await session(port), await session(port)
        try:
            assert (await mail(a, 60_000)).startswith("250")
            assert (await mail(b)).startswith("250")  # no SIZE: only a first slice is taken
            body = b"Subject: big\r\n\r\n" + (b"z" * 76 + b"\r\n") * 600  # ~46 KB > the 40 KB free
            assert await send_data(b, body) == NO_ROOM
            assert (await b.cmd("NOOP")).startswith("250")  # the session goes on
            assert (await a.cmd("RSET")).startswith("250")
            assert (await mail(b)).startswith("250")
            assert (await send_data(b, body)).startswith("250")
        finally:
            await a.close()
            await b.close()
        assert len(spooled(app)) == 1


async def test_bare_lf_message_of_short_lines_is_accepted(tmp_path: Path) -> None:
    # A line ends at LF when there is no CR: 200 short bare-LF lines are not one long line.
    # Only lines after CRLF are dot-unstuffed (RFC 5321 §4.5.2), as before; the bytes are kept.
    async with running(tmp_path) as app:
        c = await session(app.config.smtp.listen.port)
        async with c:
            assert (await mail(c)).startswith("250")
            body = b"Subject: bare LF\n\n" + b"".join(b"line %d of many\n" % i for i in range(200))
            body += b".not stuffed after LF\nlast line\r\n..stuffed after CRLF\r\n"
            assert (await send_data(c, body)).startswith("250")
        data = spooled(app)[0]
        assert data.endswith(body.replace(b"\r\n..", b"\r\n."))
        assert data.split(b"\n\n", 1)[1] == body.split(b"\n\n", 1)[1].replace(b"\r\n..", b"\r\n.")


async def test_lf_dot_lf_does_not_end_data(tmp_path: Path) -> None:
    # Only CRLF.CRLF ends DATA; treating "\n.\n" as the end would allow SMTP smuggling
    # (CVE-2023-51764) towards an upstream that reads it differently.
    async with running(tmp_path) as app:
        c = await session(app.config.smtp.listen.port)
        async with c:
            assert (await mail(c)).startswith("250")
            body = b"Subject: s\r\n\r\nbefore\n.\nMAIL FROM:<evil@example.com>\r\nafter\r\n"
            assert (await send_data(c, body)).startswith("250")
        assert spooled(app)[0].endswith(b"before\n.\nMAIL FROM:<evil@example.com>\r\nafter\r\n")


async def test_line_over_1000_octets_still_refused(tmp_path: Path) -> None:
    async with running(tmp_path) as app:
        c = await session(app.config.smtp.listen.port)
        async with c:
            assert (await mail(c)).startswith("250")
            reply = await send_data(c, b"Subject: long\r\n\r\n" + b"x" * 1200 + b"\r\n")
            assert reply.startswith("500")
        assert spooled(app) == []


def test_data_budget_config() -> None:
    smtp = cfg.parse({}).smtp
    assert smtp.max_concurrent_data_bytes == 4 * smtp.max_message_size
    assert cfg.parse({"smtp": {"max_message_size": 2048}}).smtp.max_concurrent_data_bytes == 4 * 2048
    with pytest.raises(ConfigError, match="smtp.max_concurrent_data_bytes"):
        cfg.parse({"smtp": {"max_message_size": 2048, "max_concurrent_data_bytes": 2047}})


async def test_the_budget_s_last_bytes_are_usable(tmp_path: Path) -> None:
    async with running(tmp_path, **LIMITS) as app:
        port = app.config.smtp.listen.port
        a, b = await session(port), await session(port)
        try:
            assert (await mail(a, 60_000)).startswith("250")
            assert (await mail(b)).startswith("250")
            body = b"Subject: fits\r\n\r\n" + (b"z" * 76 + b"\r\n") * 500  # ~39 KB of the 40 KB free
            assert (await send_data(b, body)).startswith("250")
        finally:
            await a.close()
            await b.close()
