# The per-client caps hold for the service, not for each of its processes: with
# [server] processes = 2 the kernel spreads one client's connections over both, and
# each process alone would let it have twice the cap (Postfix counts in one place,
# its anvil server, for all smtpd processes). Same for the AUTH failure budget.
from __future__ import annotations

import base64
import socket
from pathlib import Path

from tests.support import RelayProcess, wait_for

CONNECTIONS = 12  # several times the cap: the kernel's spread lands some on each process


def add_keys(relay: RelayProcess, table: str, keys: str) -> None:
    """Keys for a table RelayProcess writes itself ([smtp], [tracking]): TOML has one of each."""
    text = relay.config_path.read_text()
    assert f"{table}\n" in text
    relay.config_path.write_text(text.replace(f"{table}\n", f"{table}\n{keys}\n", 1))


def greetings(port: int, count: int) -> tuple[list[socket.socket], list[bytes]]:
    socks, lines = [], []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        socks.append(s)
        lines.append(s.recv(200))
    return socks, lines


def still_open(socks: list[socket.socket]) -> int:
    n = 0
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(1) == b"":
                continue  # closed by relay
        except BlockingIOError:
            pass
        except OSError:
            continue
        n += 1
    return n


async def test_smtp_and_tracking_per_client_caps_span_the_processes(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path, "", processes=2)
    add_keys(relay, "[smtp]", "max_connections_per_client = 3")
    add_keys(relay, "[tracking]", "max_connections_per_client = 3")
    await relay.start()
    socks: list[socket.socket] = []
    try:
        smtp, lines = greetings(relay.smtp_port, CONNECTIONS)
        socks += smtp
        assert sum(line.startswith(b"220 ") for line in lines) == 3, lines
        assert sum(line.startswith(b"421 4.7.0 Too many connections from 127.0.0.1") for line in lines) == \
            CONNECTIONS - 3
        for s in smtp:
            s.close()
        # The slots come back when the connections close, whichever process held them.
        await wait_for(lambda: sum(g.startswith(b"220 ") for g in greetings_closed(relay.smtp_port)) == 3, 10)

        http = [socket.create_connection(("127.0.0.1", relay.http_port), timeout=10) for _ in range(CONNECTIONS)]
        socks += http
        await wait_for(lambda: still_open(http) == 3, 5)
    finally:
        for s in socks:
            s.close()
        assert await relay.stop() == 0


def greetings_closed(port: int) -> list[bytes]:
    socks, lines = greetings(port, CONNECTIONS)
    for s in socks:
        s.close()
    return lines


def auth_plain(port: int, password: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"EHLO t\r\n")
        while f.readline()[3:4] == b"-":
            pass
        s.sendall(b"AUTH PLAIN " + base64.b64encode(b"\0app\0" + password) + b"\r\n")
        reply = f.readline()
        f.close()
        return reply


async def test_auth_failure_budget_spans_the_processes(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path, '[smtp.users]\napp = "a-long-right-password"\n', processes=2)
    add_keys(relay, "[smtp]", "auth_failure_delay = 0\nauth_failure_budget = 4\nauth_failure_window = 600\n"
                              "auth_max_failures_per_connection = 3")
    await relay.start()
    try:
        # One failure per connection: the connections land on both processes.
        replies = [auth_plain(relay.smtp_port, b"guess%d" % n) for n in range(10)]
        assert [r[:3] for r in replies] == [b"535"] * 3 + [b"421"] * 7, replies
        assert auth_plain(relay.smtp_port, b"a-long-right-password").startswith(b"421 4.7.0")
    finally:
        assert await relay.stop() == 0
