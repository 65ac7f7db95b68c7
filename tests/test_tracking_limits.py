# The tracking port faces the internet: connection caps (per client address, in total,
# "auto" from the fd limit), the request-head deadline against trickling clients, the
# keep-alive idle timeout, and their [tracking] keys. Real sockets on loopback; other
# client addresses are other 127.x.y.z addresses.
from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from relay import config as cfg
from relay.errors import ConfigError
from relay.limits import DEFAULT_PER_CLIENT, connection_budget
from relay.tracking import TrackingServer
from relay.tracking.server import max_connections
from tests.support import RelayProcess, Upstream, wait_for
from tests.test_serve import submit
from tests.test_tracking import HTML_MESSAGE, RCPTS, TRACKED

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _Bus:
    def publish(self, *args: object) -> None:
        raise AssertionError("no hits in these tests")


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[TrackingServer]]]:
    servers: list[TrackingServer] = []

    async def start(**tracking: object) -> TrackingServer:
        config = cfg.parse({"tracking": {"listen": "127.0.0.1:0", **tracking}})
        server = TrackingServer(config=config, signer=None, spool=None, bus=_Bus())  # type: ignore[arg-type]
        await server.start()
        servers.append(server)
        return server
    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def conns() -> AsyncIterator[list[asyncio.StreamWriter]]:
    """Raw connections a test opens; all closed after it."""
    writers: list[asyncio.StreamWriter] = []
    yield writers
    for w in writers:
        w.close()
        with contextlib.suppress(Exception):
            await w.wait_closed()


async def connect(server: TrackingServer, writers: list[asyncio.StreamWriter], source: str = "127.0.0.2") -> Conn:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, local_addr=(source, 0))
    writers.append(writer)
    return reader, writer


async def closed_by_server(reader: asyncio.StreamReader, within: float = 10.0) -> bool:
    """Whether the server closes the connection (EOF or reset) within a bounded wait."""
    try:
        while True:  # bounded by the timeout
            if not await asyncio.wait_for(reader.read(4096), within):
                return True
    except TimeoutError:  # before OSError, its base class
        return False
    except (ConnectionError, OSError):
        return True


async def still_open(reader: asyncio.StreamReader) -> bool:
    return not await closed_by_server(reader, within=0.3)


async def healthz(server: TrackingServer) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{server.port}/healthz") as r:
            return r.status


async def test_per_client_cap_closes_the_extra_connection_at_once(serve, conns, caplog) -> None:
    server = await serve(max_connections_per_client=3, header_timeout=60)
    held = [await connect(server, conns) for _ in range(3)]
    extra = [await connect(server, conns) for _ in range(4)]
    for reader, _ in extra:
        assert await closed_by_server(reader)  # before it sent anything
    for reader, _ in held:
        assert await still_open(reader)
    assert await healthz(server) == 200  # another address is not affected
    refusals = [r for r in caplog.records if r.levelno == logging.WARNING and "refusing" in r.message]
    assert len(refusals) == 1 and "127.0.0.2" in refusals[0].message  # one line, not one per connection
    # a slot freed is a slot again
    held[0][1].close()
    await wait_for(lambda: server.guard is not None and server.guard.limits.open_for("127.0.0.2") == 2, 5)
    reader, writer = await connect(server, conns)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200")


async def test_total_cap(serve, conns) -> None:
    server = await serve(max_connections=4, max_connections_per_client=3, header_timeout=60)
    held = [await connect(server, conns, source) for source in ("127.0.0.2",) * 3 + ("127.0.0.3",)]
    reader, _ = await connect(server, conns, "127.0.0.4")
    assert await closed_by_server(reader)
    for r, _ in held:
        assert await still_open(r)


async def test_a_trickling_client_is_closed_after_the_header_timeout(serve, conns) -> None:
    server = await serve(header_timeout=1, keepalive_timeout=60)
    reader, writer = await connect(server, conns)
    writer.write(b"GET /healthz HTTP/1.1\r\n")
    trickle = b"X-Slow: " + b"a" * 200
    closed = False
    for byte in trickle:  # a byte every 0.1 s: at most 20 s, far past the timeout
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except (ConnectionError, OSError):
            closed = True
            break
        if not await still_open_briefly(reader):
            closed = True
            break
    assert closed


async def still_open_briefly(reader: asyncio.StreamReader) -> bool:
    return not await closed_by_server(reader, within=0.1)


async def test_a_silent_connection_is_closed_after_the_header_timeout(serve, conns) -> None:
    server = await serve(header_timeout=1, keepalive_timeout=60)
    reader, _ = await connect(server, conns)
    assert await closed_by_server(reader, within=10)


async def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout(serve, conns) -> None:
    server = await serve(header_timeout=60, keepalive_timeout=1)
    reader, writer = await connect(server, conns)
    for _ in range(2):  # kept alive between requests answered in time
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" not in head
        assert await asyncio.wait_for(reader.readexactly(3), 5) == b"ok\n"
    assert await closed_by_server(reader, within=10)


async def test_a_busy_kept_alive_connection_outlives_the_header_timeout(serve, conns) -> None:
    # Each complete head disarms the deadline: only a head in progress is timed.
    server = await serve(header_timeout=1, keepalive_timeout=60)
    reader, writer = await connect(server, conns)
    for _ in range(8):  # 8 requests 0.5 s apart: 4 s, well past the header timeout
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        assert await asyncio.wait_for(reader.readexactly(3), 5) == b"ok\n"
        await asyncio.sleep(0.5)


def test_auto_total_is_the_listeners_share_of_the_fd_limit() -> None:
    config = cfg.parse({"upstream": {"connections": 8}})
    assert max_connections(config, nofile=1024) == connection_budget(1024, upstream_connections=8).http
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert max_connections(config) == connection_budget(soft, upstream_connections=8).http
    assert max_connections(cfg.parse({"tracking": {"max_connections": 7}}), nofile=1024) == 7


def test_limit_keys_and_defaults() -> None:
    t = cfg.parse({}).tracking
    assert (t.max_connections, t.max_connections_per_client, t.header_timeout, t.keepalive_timeout) == (
        0, DEFAULT_PER_CLIENT, 10.0, 75.0)
    t = cfg.parse({"tracking": {"max_connections": 100, "max_connections_per_client": 5,
                                "header_timeout": 2.5, "keepalive_timeout": 30}}).tracking
    assert (t.max_connections, t.max_connections_per_client, t.header_timeout, t.keepalive_timeout) == (
        100, 5, 2.5, 30.0)


@pytest.mark.parametrize(("key", "value"), [
    ("max_connections", -1), ("max_connections", "many"), ("max_connections", 1.5),
    ("max_connections_per_client", 0), ("max_connections_per_client", True),
    ("header_timeout", 0), ("header_timeout", "10s"), ("keepalive_timeout", -5),
])
def test_bad_limit_values_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as e:
        cfg.parse({"tracking": {key: value}})
    message = str(e.value)
    assert f"tracking.{key}:" in message and "\n" not in message


async def test_idle_connections_at_the_fd_limit_starve_neither_health_nor_intake(tmp_path: Path) -> None:
    """`relay serve` under ulimit -n 256: 1,100 idle connections from one address, then
    more idle ones from several, than its share of descriptors (the "auto" total)."""
    up = await Upstream().start()
    # Soft and hard at 256: relay serve raises its soft limit to the hard one, as it should.
    relay = RelayProcess(tmp_path, TRACKED, upstream_url=f"smtp://127.0.0.1:{up.port}", nofile=(256, 256),
                         processes=1)  # one process's own descriptor budget
    relay.config_path.write_text(relay.config_path.read_text().replace(
        "[tracking]\n", "[tracking]\nheader_timeout = 5\n", 1))
    writers: list[asyncio.StreamWriter] = []

    async def idle(count: int, sources: list[str]) -> None:
        for i in range(count):
            with contextlib.suppress(ConnectionError, OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", relay.http_port,
                                                          local_addr=(sources[i % len(sources)], 0))
                writers.append(writer)

    async def health() -> int:
        with contextlib.suppress(aiohttp.ClientError):
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{relay.http_port}/healthz") as r:
                    return r.status
        return 0

    try:
        await relay.start()
        await idle(1100, ["127.0.0.2"])  # one client: held to max_connections_per_client
        assert await health() == 200
        reply = await submit(relay.smtp_port, HTML_MESSAGE, sender="news@example.com", rcpts=RCPTS[:1])
        assert reply.startswith("Ok")
        # Many clients: the total cap keeps descriptors for SMTP intake; the idle ones
        # are closed by the header timeout, and then health answers again.
        await idle(200, [f"127.0.1.{n}" for n in range(1, 6)])
        reply = await submit(relay.smtp_port, HTML_MESSAGE, sender="news@example.com", rcpts=RCPTS[:1])
        assert reply.startswith("Ok")
        await wait_for(lambda: len(up.messages) == 2)
        assert await wait_for_async(health, 200, 30)
        output = relay.output()
        assert "refusing connections from 127.0.0.2" in output and "max_connections reached" in output
        assert output.count("refusing connections from 127.0.0.2") == 1  # not one line per connection
    finally:
        for w in writers:
            w.close()
        await relay.stop()
        await up.stop()


async def wait_for_async(probe: Callable[[], Awaitable[int]], expected: int, timeout: float) -> bool:
    for _ in range(int(timeout / 0.25)):  # bounded
        if await probe() == expected:
            return True
        await asyncio.sleep(0.25)
    return False
