# Real parts for tests: an aiosmtpd capture server as the upstream, `relay serve`
# as a subprocess, and bounded waits. Loopback only; every process is stopped.
from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from aiosmtpd.smtp import SMTP

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Received:
    mail_from: str
    rcpts: list[str]
    data: bytes


@dataclass
class Capture:
    """An aiosmtpd handler that records what it is given and answers from a script."""

    messages: list[Received] = field(default_factory=list)
    data_replies: list[str] = field(default_factory=list)  # consumed one per DATA; then 250
    rcpt_replies: dict[str, str] = field(default_factory=dict)  # fixed reply per recipient
    sessions: int = 0

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        reply = self.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_replies:
            reply = self.data_replies.pop(0)
            if not reply.startswith("2"):
                return reply
        self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 Ok: queued"


class Upstream:
    """A real SMTP server on loopback in the test's event loop."""

    def __init__(self, handler: Capture | None = None, port: int | None = None, *,
                 eight_bit: bool = True, smtputf8: bool = True) -> None:
        self.handler = handler or Capture()
        self._eight_bit = eight_bit  # aiosmtpd offers 8BITMIME unless it decodes data
        self._smtputf8 = smtputf8
        self.port = port or free_port()
        self._server: asyncio.base_events.Server | None = None
        self._protocols: list[SMTP] = []

    async def start(self) -> "Upstream":
        def factory() -> SMTP:
            self.handler.sessions += 1
            proto = SMTP(self.handler, hostname="upstream.test", enable_SMTPUTF8=self._smtputf8,
                         decode_data=not self._eight_bit)
            self._protocols.append(proto)
            return proto
        self._server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for proto in self._protocols:  # drop live sessions too, like a crashed server
                if proto.transport is not None:
                    proto.transport.close()
            self._protocols.clear()
            await self._server.wait_closed()
            self._server = None

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages

    @property
    def open_connections(self) -> int:
        # aiosmtpd sets transport to None when the connection is lost.
        return sum(1 for p in self._protocols if p.transport is not None and not p.transport.is_closing())


async def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll until predicate() is truthy; bounded. Returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class RelayProcess:
    """`relay serve` as a subprocess, on ports of its own."""

    def __init__(self, tmp: Path, config_body: str, *, smtp_port: int | None = None,
                 http_port: int | None = None, upstream_url: str | None = None,
                 nofile: tuple[int, int] | None = None, serve_args: tuple[str, ...] = (),
                 processes: int | None = None) -> None:
        self.tmp = tmp
        self.serve_args = serve_args  # extra `relay serve` options, e.g. ("--log-format", "json")
        self.nofile = nofile  # RLIMIT_NOFILE (soft, hard) for the child, as `ulimit -n` would set
        self.smtp_port = smtp_port or free_port()
        self.http_port = http_port or free_port()
        self.db = tmp / "relay.db"
        self.config_path = tmp / "relay.toml"
        # processes: [server] processes (default: the number of cores, as relay's own default).
        header = (f"[server]\nprocesses = {processes}\n" if processes is not None else "") + (
            f'[smtp]\nlisten = "127.0.0.1:{self.smtp_port}"\nhostname = "relay.test"\n'
            f'[tracking]\nlisten = "127.0.0.1:{self.http_port}"\n'
            f'[storage]\npath = "{self.db}"\n'
        )
        if upstream_url:
            header += f'[upstream]\nurl = "{upstream_url}"\nretry_first_delay = 0.2\nretry_max_delay = 1\n'
        self.config_path.write_text(header + config_body)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "relay.log"

    async def start(self) -> "RelayProcess":
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._logf = open(self.log, "ab")
        nofile = self.nofile
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay.cli", "serve", "--config", str(self.config_path), *self.serve_args],
            cwd=self.tmp, stdout=self._logf, stderr=subprocess.STDOUT, env=env,
            preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile)) if nofile else None)
        try:
            # The ready line, not the ports: with several processes the parent binds the
            # ports before the workers start, so open ports do not mean a worker is serving.
            await wait_for(lambda: self.proc.poll() is not None or (
                b"relay: SMTP listening on" in self.log.read_bytes()
                and port_open(self.smtp_port) and port_open(self.http_port)), 20)
        except AssertionError:
            await self.stop()
            raise
        if self.proc.poll() is not None:
            raise AssertionError(f"relay exited at start: {self.log.read_text()}")
        return self

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        code = self.proc.returncode
        self.proc = None
        self._logf.close()
        if code != 0 and sig == signal.SIGTERM:  # shown by pytest when the test fails on it
            sys.stderr.write(f"relay exited {code} after SIGTERM; its log ends:\n{self.output()[-4000:]}\n")
        return code

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        con = sqlite3.connect(self.db, timeout=10)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()
