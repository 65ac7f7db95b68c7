# `relay serve` with several processes ([server] processes = 2): mail accepted by any
# process is delivered exactly once, /metrics counts every process, SIGTERM stops them
# all, and kill -9 of relay serve takes its workers with it and loses nothing.
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import urllib.request
from pathlib import Path

import aiosmtplib
import pytest

from tests.support import RelayProcess, Upstream, free_port, port_open, wait_for

SET = """
[configuration_sets.plain]
[[configuration_sets.plain.event_destinations]]
name = "db"
type = "sqlite"
matching_event_types = ["send", "delivery"]
"""


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


async def submit_each_on_its_own_connection(port: int, count: int) -> list[str]:
    ids = []
    for n in range(count):
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=20) as c:
            _, reply = await c.sendmail("a@example.com", [f"r{n}@example.org"],
                                        f"X-SES-CONFIGURATION-SET: plain\r\nSubject: {n}\r\n\r\nbody {n}\r\n".encode())
        ids.append(reply.split()[-1])
    return ids


@pytest.fixture
async def upstream():
    up = await Upstream().start()
    yield up
    await up.stop()


async def test_two_processes_deliver_everything_once_and_count_every_process(tmp_path: Path, upstream: Upstream) -> None:
    admin = free_port()
    relay = RelayProcess(tmp_path, SET + f'[admin]\nlisten = "127.0.0.1:{admin}"\n',
                         upstream_url=f"smtp://127.0.0.1:{upstream.port}", processes=2)
    await relay.start()
    try:
        assert relay.proc is not None
        await wait_for(lambda: len(children(relay.proc.pid)) == 2, 10)  # type: ignore[union-attr]
        ids = await submit_each_on_its_own_connection(relay.smtp_port, 40)
        await wait_for(lambda: len(upstream.messages) >= 40, 20)
        await asyncio.sleep(0.5)  # a second copy, if there were one, would arrive by now
        bodies = sorted(m.data.split(b"\r\n\r\n", 1)[1] for m in upstream.messages)
        assert bodies == sorted(f"body {n}\r\n".encode() for n in range(40))  # each exactly once
        assert len(set(ids)) == 40
        await wait_for(lambda: relay.query("SELECT COUNT(*) FROM recipients WHERE state = 'delivered'") == [(40,)])
        text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10).read().decode()
        accepted = [line for line in text.splitlines() if line.startswith('relay_smtp_transactions_total{result="accepted"}')]
        assert accepted == ['relay_smtp_transactions_total{result="accepted"} 40.0']
        assert 'relay_events_total{configuration_set="plain",event_type="Delivery"} 40.0' in text
        assert relay.output().count("relay: SMTP listening on") == 1  # one service, one line
    finally:
        assert await relay.stop() == 0  # SIGTERM: every worker ends, the service exits 0


async def test_sigterm_stops_every_worker(tmp_path: Path, upstream: Upstream) -> None:
    relay = RelayProcess(tmp_path, SET, upstream_url=f"smtp://127.0.0.1:{upstream.port}", processes=2)
    await relay.start()
    assert relay.proc is not None
    workers = await wait_for(lambda: len(children(relay.proc.pid)) == 2 and children(relay.proc.pid), 10)  # type: ignore[union-attr]
    assert await relay.stop() == 0
    assert not any(alive(pid) for pid in workers)
    assert not port_open(relay.smtp_port) and not port_open(relay.http_port)


async def test_repeated_sigterm_still_exits_0(tmp_path: Path, upstream: Upstream) -> None:
    """SIGTERM again and again (the supervisor repeats it; a user presses Ctrl-C twice):
    a worker already past its shutdown must not die of it and turn exit 0 into 1."""
    relay = RelayProcess(tmp_path, SET, upstream_url=f"smtp://127.0.0.1:{upstream.port}", processes=2)
    await relay.start()
    proc = relay.proc
    assert proc is not None
    for _ in range(2000):  # bounded: 20 s at most
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.01)
    assert await relay.stop() == 0, relay.output()[-2000:]


async def test_kill_9_takes_the_workers_along_and_a_restart_delivers_what_was_accepted(
        tmp_path: Path, upstream: Upstream) -> None:
    upstream.handler.data_replies = ["451 4.3.0 not now"] * 5  # the first copies are deferred
    relay = RelayProcess(tmp_path, SET, upstream_url=f"smtp://127.0.0.1:{upstream.port}", processes=2)
    await relay.start()
    try:
        assert relay.proc is not None
        workers = await wait_for(lambda: len(children(relay.proc.pid)) == 2 and children(relay.proc.pid), 10)  # type: ignore[union-attr]
        ids = await submit_each_on_its_own_connection(relay.smtp_port, 5)
        await relay.stop(sig=signal.SIGKILL)
        await wait_for(lambda: not any(alive(pid) for pid in workers), 5)  # they die with relay serve
        await relay.start()  # the ports are free again at once
        await wait_for(lambda: relay.query("SELECT COUNT(*) FROM recipients WHERE state = 'delivered'") == [(5,)], 20)
        delivered = relay.query("SELECT message_id FROM recipients WHERE state = 'delivered'")
        assert sorted(m for (m,) in delivered) == sorted(ids)
    finally:
        await relay.stop()
