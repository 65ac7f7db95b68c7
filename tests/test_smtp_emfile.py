# `relay serve` out of file descriptors: it raises its soft RLIMIT_NOFILE to the hard
# limit at start, logs accept() failures once per interval instead of a traceback per
# attempt, and serves again once connections are released.
from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

from tests.support import RelayProcess, wait_for
from tests.test_serve import MESSAGE, PLAIN_SET, submit


class LimitedRelay(RelayProcess):
    """`relay serve` started under RLIMIT_NOFILE = (soft, hard)."""

    def __init__(self, tmp: Path, soft: int, hard: int, smtp_keys: str = "") -> None:
        # One process: these tests are about one process's own descriptor budget.
        super().__init__(tmp, PLAIN_SET, upstream_url="maildir:outbox", nofile=(soft, hard), processes=1)
        self.config_path.write_text(self.config_path.read_text().replace(
            'hostname = "relay.test"\n', 'hostname = "relay.test"\n' + smtp_keys))


def open_files_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open files line")


async def test_raises_soft_nofile_to_hard_and_logs_it(tmp_path: Path) -> None:
    relay = LimitedRelay(tmp_path, 256, 1024)
    try:
        await relay.start()
        assert relay.proc is not None
        assert open_files_limit(relay.proc.pid) == (1024, 1024)
        await wait_for(lambda: "open files limit 1024" in relay.output(), 5)
    finally:
        await relay.stop()


async def test_emfile_flood_is_logged_briefly_and_intake_recovers(tmp_path: Path) -> None:
    # The caps are set high on purpose so that the descriptors run out first.
    relay = LimitedRelay(tmp_path, 64, 64, "max_connections = 1000\nmax_connections_per_client = 1000\n")
    try:
        await relay.start()
    except BaseException:
        await relay.stop()
        raise
    flood: list[socket.socket] = []
    try:
        for _ in range(120):  # more connections than the relay has descriptors
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", relay.smtp_port))
            flood.append(s)
        await wait_for(lambda: "out of file descriptors" in relay.output(), 10)
        await asyncio.sleep(2.5)  # asyncio retries accept() every second: several failures
        for s in flood:
            s.close()
        flood.clear()
        reply = await asyncio.wait_for(_submit_when_ready(relay.smtp_port), 20)
        assert reply.startswith("Ok ")
    finally:
        for s in flood:
            s.close()
        await relay.stop()
    out = relay.output()
    assert "Traceback" not in out
    assert out.count("out of file descriptors") <= 2


async def _submit_when_ready(port: int) -> str:
    while True:
        try:
            return await submit(port, MESSAGE)
        except Exception:  # noqa: BLE001 - the backlog drains first; bounded by the caller
            await asyncio.sleep(0.2)


async def test_connection_cap_derived_from_the_open_files_limit(tmp_path: Path) -> None:
    # 64 descriptors: limits.connection_budget gives SMTP its floor of 10 connections.
    relay = LimitedRelay(tmp_path, 64, 64)
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        await relay.start()
        await wait_for(lambda: "at most 10 connections" in relay.output(), 5)
        for i in range(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.smtp_port, local_addr=(f"127.0.0.{i + 1}", 0))
            held.append((reader, writer))
            assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"220")
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.smtp_port, local_addr=("127.0.0.20", 0))
        held.append((reader, writer))
        assert await asyncio.wait_for(reader.read(), 10) == b"421 4.7.0 Server busy, too many connections\r\n"
    finally:
        for _, writer in held:
            writer.close()
        await relay.stop()
