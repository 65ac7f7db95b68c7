# The upstream pool reuses a connection that just finished a transaction without an
# RSET round trip; it sends RSET (which also checks the connection) after an idle
# spell or a refused DATA; and when a reused connection turns out to be gone at MAIL
# (421, or closed), the message goes out on a new connection in the same attempt.
# A real aiosmtpd upstream on loopback; SmtpUpstream as relay uses it.
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, AsyncIterator

import pytest

from relay import config as cfg
from relay import upstream as upstream_module
from relay.upstream import SmtpUpstream
from tests.support import Capture, Upstream

MESSAGE = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nhello\r\n"


@dataclass
class Counting(Capture):
    """Counts RSETs; can answer MAIL on a session's second transaction with 421, or drop it there."""

    rsets: int = 0
    on_reuse: str = ""  # "", "421" or "close"
    _transactions: dict[int, int] | None = None

    async def handle_RSET(self, server: Any, session: Any, envelope: Any) -> str:
        self.rsets += 1
        return "250 OK"

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str | None:
        seen = self._transactions = self._transactions or {}
        n = seen[id(session)] = seen.get(id(session), 0) + 1
        if n > 1 and self.on_reuse == "421":
            return "421 4.7.0 upstream.test closing connection"
        if n > 1 and self.on_reuse == "close":
            server.transport.close()
            return None
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"


def make(port: int) -> SmtpUpstream:
    config = cfg.parse({"upstream": {"url": f"smtp://127.0.0.1:{port}", "connections": 1, "timeout": 5}})
    return SmtpUpstream(config.upstream, local_hostname="relay.test")


@pytest.fixture
async def server() -> AsyncIterator[Upstream]:
    up = await Upstream(Counting()).start()
    yield up
    await up.stop()


async def send(pool: SmtpUpstream, n: int = 1) -> list[int]:
    codes = []
    for i in range(n):
        replies = await pool.send("a@example.com", [f"b{i}@example.org"], MESSAGE)
        codes += [r.code for r in replies.values()]
    return codes


async def test_back_to_back_messages_reuse_the_connection_without_rset(server: Upstream) -> None:
    pool = make(server.port)
    try:
        assert await send(pool, 5) == [250] * 5
    finally:
        await pool.close()
    handler = server.handler
    assert isinstance(handler, Counting)
    assert handler.rsets == 0 and handler.sessions == 1 and len(server.messages) == 5


async def test_an_idle_connection_gets_rset_first(server: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream_module, "PROBE_AFTER", 0.05)
    pool = make(server.port)
    try:
        assert await send(pool) == [250]
        await asyncio.sleep(0.2)
        assert await send(pool) == [250]
    finally:
        await pool.close()
    handler = server.handler
    assert isinstance(handler, Counting)
    assert handler.rsets == 1 and handler.sessions == 1 and len(server.messages) == 2


async def test_after_a_refused_data_the_next_message_starts_with_rset(server: Upstream) -> None:
    handler = server.handler
    assert isinstance(handler, Counting)
    handler.data_replies.append("554 5.7.1 refused")
    pool = make(server.port)
    try:
        assert await send(pool, 2) == [554, 250]
    finally:
        await pool.close()
    assert handler.rsets == 1 and len(server.messages) == 1


@pytest.mark.parametrize("how", ["421", "close"])
async def test_a_reused_connection_gone_at_mail_is_replaced_in_the_same_attempt(server: Upstream,
                                                                                 how: str) -> None:
    handler = server.handler
    assert isinstance(handler, Counting)
    handler.on_reuse = how
    pool = make(server.port)
    try:
        # Every second transaction on a connection fails at MAIL: each message after the
        # first needs a new connection, and still goes out in its one attempt.
        assert await send(pool, 3) == [250, 250, 250]
    finally:
        await pool.close()
    assert [m.rcpts for m in server.messages] == [["b0@example.org"], ["b1@example.org"], ["b2@example.org"]]
    assert handler.sessions == 3


async def test_a_new_connection_refused_at_mail_is_reported_not_retried(server: Upstream) -> None:
    handler = server.handler
    assert isinstance(handler, Counting)
    handler.on_reuse = "421"
    handler._transactions = {}
    pool = make(server.port)
    try:
        assert await send(pool) == [250]
        await pool.close()  # the next message needs a new connection

        async def always_421(*args: Any) -> str:
            return "421 4.3.2 upstream.test shutting down"
        handler.handle_MAIL = always_421  # type: ignore[method-assign]
        replies = await pool.send("a@example.com", ["c@example.org"], MESSAGE)
    finally:
        await pool.close()
    assert [r.code for r in replies.values()] == [421] and handler.sessions == 2
