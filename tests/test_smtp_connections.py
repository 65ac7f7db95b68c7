# Connection caps on the SMTP port (Postfix smtpd_client_connection_count_limit and
# process_limit): extra connections and clients outside allowed_clients get a
# refusing greeting and are closed at once, before they can hold a session.
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from relay import config as cfg
from relay.errors import ConfigError
from relay.limits import DEFAULT_PER_CLIENT
from tests.smtp_harness import Client, running, session, until

PER_CLIENT = "421 4.7.0 Too many connections from {ip}"
BUSY = "421 4.7.0 Server busy, too many connections"


async def refused_with(port: int, source: str = "127.0.0.1") -> str:
    async with await Client.connect(port, source) as c:
        greeting = await c.reply()
        assert await c.closed(), "a refused connection is closed by the server"
        return greeting


async def test_per_client_cap(tmp_path: Path) -> None:
    async with running(tmp_path, max_connections_per_client=2) as app:
        port = app.config.smtp.listen.port
        first, second = await session(port), await session(port)
        try:
            assert await refused_with(port) == PER_CLIENT.format(ip="127.0.0.1")
            other = await session(port, "127.0.0.2")  # another address has its own count
            await other.close()
            await first.close()

            async def served() -> bool:
                async with await Client.connect(port) as c:
                    return (await c.reply()).startswith("220")
            await until(served)  # the slot comes back when a connection ends
        finally:
            await first.close()
            await second.close()


async def test_total_cap(tmp_path: Path) -> None:
    async with running(tmp_path, max_connections=2) as app:
        port = app.config.smtp.listen.port
        held = [await session(port, "127.0.0.1"), await session(port, "127.0.0.2")]
        try:
            assert await refused_with(port, "127.0.0.3") == BUSY
        finally:
            for c in held:
                await c.close()


async def test_client_outside_allowed_clients_refused_at_connect(tmp_path: Path) -> None:
    async with running(tmp_path, allowed_clients=["127.0.0.2"], max_connections=3) as app:
        port = app.config.smtp.listen.port
        greeting = await refused_with(port, "127.0.0.1")
        assert greeting.startswith("554 5.7.1 ") and "127.0.0.1" in greeting
        # Refused clients take no slot: the allowed one still gets in after many of them.
        await asyncio.gather(*(refused_with(port, "127.0.0.1") for _ in range(10)))
        c = await session(port, "127.0.0.2")
        await c.close()


def test_config_defaults_and_validation() -> None:
    smtp = cfg.parse({}).smtp
    assert smtp.max_connections == 0  # auto: from the open-files limit at start
    assert smtp.max_connections_per_client == DEFAULT_PER_CLIENT
    for key, bad in (("max_connections", -1), ("max_connections_per_client", 0)):
        with pytest.raises(ConfigError, match=f"smtp.{key}"):
            cfg.parse({"smtp": {key: bad}})
