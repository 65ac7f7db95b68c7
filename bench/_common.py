# Shared parts of the benchmarks: loopback ports, subprocesses that are always
# stopped, CPU accounting from /proc, percentiles, a minimal capture upstream and
# relay's configuration. Nothing here asserts on timing.
from __future__ import annotations

import asyncio
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from aiosmtpd.smtp import SMTP

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
HOST = "127.0.0.1"  # loopback only
TICKS = os.sysconf("SC_CLK_TCK")
SENDER = "news@example.com"
LINKS = 10  # links in the HTML part of the benchmark message


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((HOST, port)) == 0


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) used so far by a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15)


def thread_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of a process's main thread and of all its other threads together."""
    main = other = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        t = (int(fields[11]) + int(fields[12])) / TICKS
        if int(tid) == pid:
            main += t
        else:
            other += t
    return main, other


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


_BURN = ("import time\nend = time.perf_counter() + {s}\nn = 0\n"
         "while time.perf_counter() < end:\n    n += 1\nprint(n)")


def _burn_together(count: int, seconds: float) -> int:
    """Loop iterations done by `count` processes burning CPU at the same time (bounded)."""
    procs = [subprocess.Popen([sys.executable, "-c", _BURN.format(s=seconds)], stdout=subprocess.PIPE, text=True)
             for _ in range(count)]
    total = 0
    for p in procs:
        try:
            out, _ = p.communicate(timeout=seconds + 20)
            total += int(out.strip() or 0)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
    return total


def cpu_calibration(seconds: float = 0.5) -> str:
    """How much CPU the machine gives right now: a pure-Python loop in one process,
    then in two at once (on a shared VM the second core is not always a full one)."""
    one = _burn_together(1, seconds)
    two = _burn_together(2, seconds)
    return (f"CPU check: 1 process {one / seconds / 1e6:.1f}M loop iterations/s; 2 processes at once "
            f"{two / seconds / 1e6:.1f}M/s in all ({two / one:.2f}x)" if one else "CPU check failed")


class Steal:
    """Share of CPU time the hypervisor took away (/proc/stat 'steal') between start and stop."""

    @staticmethod
    def _read() -> list[int]:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]

    def __init__(self) -> None:
        self.start = self._read()

    def percent(self) -> float:
        now = self._read()
        delta = [b - a for a, b in zip(self.start, now, strict=True)]
        total = sum(delta[:8])
        return 100.0 * delta[7] / total if total and len(delta) > 7 else float("nan")


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (nan when empty)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def ms(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds * 1000:.1f} ms"


def rate(n: float) -> str:
    return "-" if n != n else f"{n:,.0f}"


def fs_of(path: Path) -> str:
    """The filesystem type holding path (fsync cost depends on it)."""
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mnt, typ = parts[1], parts[2]
                if str(path.resolve()).startswith(mnt) and len(mnt) > len(best):
                    best, kind = mnt, typ
    except OSError:
        pass
    return kind


def build_message(size: int, config_set: str | None, to: str = "reader@example.org") -> bytes:
    """A multipart/alternative message of about `size` bytes: a text part and an HTML
    part with LINKS links. `X-Bench-Seq: 00000000` is overwritten per message."""
    head = (
        f"From: News <{SENDER}>\r\nTo: <{to}>\r\nSubject: Benchmark newsletter\r\n"
        "Date: Thu, 27 Nov 2025 12:00:00 +0000\r\nMessage-ID: <bench@example.com>\r\n"
        "X-Bench-Seq: 00000000\r\n"
        + (f"X-SES-CONFIGURATION-SET: {config_set}\r\n" if config_set else "")
        + "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n"
    )
    links = "".join(f'<p><a href="https://shop.example.com/item/{i}?utm_source=news&amp;utm_medium=email">'
                    f"Item {i}</a></p>\r\n" for i in range(LINKS))
    filler_line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"

    def assemble(n_text: int, n_html: int) -> str:
        return (head
                + "--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
                + "Hello,\r\n" + filler_line * n_text
                + "--b1\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
                + "<html><body>\r\n<p>Hello,</p>\r\n" + links
                + "".join(f"<p>{filler_line[:-2]}</p>\r\n" for _ in range(n_html))
                + "</body></html>\r\n--b1--\r\n")
    base = len(assemble(0, 0))
    spare = max(0, size - base)
    n_text = spare // 2 // len(filler_line)
    n_html = (spare - n_text * len(filler_line)) // (len(filler_line) + 7)
    return assemble(n_text, n_html).encode()


def with_seq(template: bytes, seq: int) -> bytes:
    return template.replace(b"X-Bench-Seq: 00000000", b"X-Bench-Seq: %08d" % seq, 1)


class Child:
    """A subprocess on loopback ports; stop() always ends it (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, argv: list[str], *, cwd: Path, log: Path, ports: Sequence[int]) -> None:
        self.name = name
        self.argv = argv
        self.cwd = cwd
        self.log = log
        self.ports = list(ports)
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    async def start(self, timeout: float = 20.0) -> "Child":
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, stdout=self._logf, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if all(map(port_open, self.ports)):
                return self
            await asyncio.sleep(0.05)
        await self.stop()
        raise RuntimeError(f"{self.name} did not start; its log:\n{self.log.read_text(errors='replace')[-3000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def thread_cpu(self) -> tuple[float, float]:
        return thread_cpu(self.pid)

    async def stop(self, timeout: float = 40.0) -> int | None:
        if self.proc is None:
            return self.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.returncode = self.proc.returncode
        self.proc = None
        self._logf.close()
        return self.returncode


def relay_child(workdir: Path, config_body: str, smtp_port: int, http_port: int) -> Child:
    cfg = workdir / "relay.toml"
    cfg.write_text(config_body)
    return Child("relay serve", [sys.executable, "-m", "relay.cli", "serve", "--config", str(cfg)],
                 cwd=workdir, log=workdir / "relay.log", ports=[smtp_port, http_port])


def relay_config(*, workdir: Path, smtp_port: int, http_port: int, upstream_port: int,
                 connections: int = 4, processes: int | None = None, max_recipients: int = 50) -> str:
    """relay as shipped (durability kept), two configuration sets: `plain` (untracked:
    send+delivery to sqlite) and `tracked` (a sqlite destination matching open and click,
    so messages are instrumented). processes None: relay's own default."""
    server = f"[server]\nprocesses = {processes}\n" if processes else ""
    return f"""{server}
[smtp]
listen = "{HOST}:{smtp_port}"
hostname = "relay.bench"
max_recipients = {max_recipients}
[upstream]
url = "smtp://{HOST}:{upstream_port}"
connections = {connections}
timeout = 30
[tracking]
listen = "{HOST}:{http_port}"
[storage]
path = "{workdir / 'relay.db'}"

[configuration_sets.plain]
[[configuration_sets.plain.event_destinations]]
name = "db"
type = "sqlite"
matching_event_types = ["send", "delivery"]

[configuration_sets.tracked]
[[configuration_sets.tracked.event_destinations]]
name = "db"
type = "sqlite"
matching_event_types = ["send", "delivery", "open", "click"]
"""


class CaptureHandler:
    """The upstream: counts what arrives and when; keeps messages only when asked."""

    SEQ = b"X-Bench-Seq: "

    def __init__(self, keep: bool = False) -> None:
        self.keep = keep
        self.count = 0
        self.last_at = 0.0
        self.arrivals: dict[int, float] = {}  # X-Bench-Seq -> monotonic arrival time
        self.messages: list[bytes] = []
        self.sample = b""  # the first message since the last reset

    def reset(self) -> None:
        self.sample = b""
        self.count = 0
        self.last_at = 0.0
        self.arrivals.clear()
        self.messages.clear()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.monotonic()
        data = envelope.original_content or b""
        self.count += 1
        self.last_at = now
        i = data.find(self.SEQ, 0, 4096)
        if i >= 0:
            self.arrivals[int(data[i + 13:i + 21])] = now
        if self.keep:
            self.messages.append(data)
        if not self.sample:
            self.sample = data
        return "250 2.0.0 Ok: queued"


class CaptureUpstream:
    def __init__(self, handler: CaptureHandler) -> None:
        self.handler = handler
        self.port = free_port()
        self._server: asyncio.base_events.Server | None = None
        self._protocols: list[SMTP] = []

    async def start(self) -> "CaptureUpstream":
        def factory() -> SMTP:
            proto = SMTP(self.handler, hostname="upstream.bench", enable_SMTPUTF8=True, decode_data=False)
            self._protocols.append(proto)
            return proto
        self._server = await asyncio.get_running_loop().create_server(factory, HOST, self.port)
        return self

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for proto in self._protocols:
            if proto.transport is not None:
                proto.transport.close()
        self._protocols.clear()
        await self._server.wait_closed()
        self._server = None


async def wait_until(predicate: Any, timeout: float, interval: float = 0.01) -> bool:
    """Poll predicate() until true or timeout (bounded); returns whether it came true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


class PySpy:
    """Optional sampling profile of a child (py-spy attached by pid; needs ptrace).

    Writes py-spy's raw collapsed stacks to `out`; py-spy exits with its target."""

    def __init__(self, pid: int, out: Path, *, gil: bool = False, rate: int = 200) -> None:
        exe = Path(sys.executable).with_name("py-spy")
        self.out = out
        # --gil: sample only the thread holding the GIL (where Python code runs);
        # otherwise every non-idle thread, GIL waits and blocking C calls included.
        self.proc = subprocess.Popen([str(exe), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
                                      "--threads", "--output", str(out), "--nonblocking",
                                      # relay serve forks its serving processes (`[server] processes`)
                                      "--subprocesses"] + (["--gil"] if gil else []),
                                     stdout=subprocess.DEVNULL, stderr=open(out.with_suffix(".log"), "wb"))

    async def wait(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# Frames that only say "the event loop ran something": left out of the inclusive list.
_BOILERPLATE = ("<frozen runpy>", "click/", "asyncio/runners.py", "asyncio/base_events.py", "asyncio/events.py",
                "threading.py", "relay/cli.py", "relay/app.py")


def summarize_collapsed(path: Path, top: int = 14) -> str:
    """Sample shares per thread, then self and inclusive shares per function for the
    main (event-loop) thread, from py-spy's raw output recorded with --threads."""
    import re
    line_no = re.compile(r":\d+\)$")
    threads: dict[str, int] = {}
    self_: dict[str, int] = {}
    incl: dict[str, int] = {}
    main_total = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"  (no profile: {e})"
    for line in lines:
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        pid = ""
        while stack.startswith("process "):  # --subprocesses: the processes first, then the thread
            first, _, stack = stack.partition(";")
            pid = first[len("process "):].partition(":")[0]
        head, _, rest = stack.partition(";")
        thread = head.split(": ", 1)[-1] if head.startswith("thread ") else "?"
        if ": " not in head and pid and head == f"thread ({pid})":
            thread = "MainThread"  # unnamed in --subprocesses output: a process's main thread has its pid
        elif ": " not in head:
            thread = "other threads"
        threads[thread] = threads.get(thread, 0) + count
        if thread != "MainThread":
            continue
        main_total += count
        frames = [line_no.sub(")", f) for f in rest.split(";") if f]
        if not frames:
            continue
        self_[frames[-1]] = self_.get(frames[-1], 0) + count
        for f in set(frames):
            if not any(b in f for b in _BOILERPLATE):
                incl[f] = incl.get(f, 0) + count
    total = sum(threads.values())
    if not total or not main_total:
        return "  (no samples)"

    def short(f: str) -> str:
        return re.sub(r"\((?:/[^ ]*/)?(?:site-packages|lib/python3\.\d+)/", "(", f)
    out = [f"  {total} non-idle samples: " + ", ".join(
        f"{name} {100 * c / total:.0f}%" for name, c in sorted(threads.items(), key=lambda x: -x[1]))]
    out.append(f"  MainThread (the event loop), self time, top {top}:")
    out += [f"    {100 * c / main_total:5.1f}%  {short(f)}"
            for f, c in sorted(self_.items(), key=lambda x: -x[1])[:top]]
    out.append(f"  MainThread, inclusive (callees included), top {top + 10}:")
    out += [f"    {100 * c / main_total:5.1f}%  {short(f)}"
            for f, c in sorted(incl.items(), key=lambda x: -x[1])[:top + 10]]
    return "\n".join(out)


def grid(columns: list[str], rows: list[list[str]]) -> list[str]:
    """A plain-text table: first column left-aligned, the rest right-aligned."""
    widths = [max(len(str(x[i])) for x in rows + [columns]) for i in range(len(columns))]

    def fmt(row: list[str]) -> str:
        return "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w)
                         for i, (v, w) in enumerate(zip(row, widths, strict=True)))
    return [fmt(columns)] + [fmt(r) for r in rows]
