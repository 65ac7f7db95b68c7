# The benchmark suite of issue 9: every scenario, relay beside its baselines measured
# in the same run, one table with the ratio, the target and PASS/MISS (or SKIP, with
# the reason). Load and sink are C programs so that they do not take relay's CPU:
# Postfix's smtp-source drives SMTP and smtp-sink receives it, wrk drives HTTP.
# Baselines: the bare forwarder and the bare aiohttp handler (_baselines.py), and
# Postfix relaying to the same sink (its own temporary config_directory and queue).
# Every process the suite starts is stopped at the end, Ctrl-C included; loopback only;
# every wait is bounded. Figures only: nothing here asserts on timing.
#
#   .venv/bin/python bench/suite.py                 # the whole suite, medians of 3 rounds (~7 min)
#   .venv/bin/python bench/suite.py --smoke         # tiny counts, no installs, ~20 s
#
# Writes the machine, the versions and the table to bench/results/latest.md.
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import aiosmtplib

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    BENCH,
    HOST,
    ROOT,
    SENDER,
    CaptureHandler,
    CaptureUpstream,
    Child,
    PySpy,
    Steal,
    build_message,
    cpu_calibration,
    free_port,
    port_open,
    relay_child,
    relay_config,
    summarize_collapsed,
    wait_until,
)

RCPT = "reader@example.org"
NAN = float("nan")
SBIN = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
TOOLS = {"smtp-source": "postfix", "smtp-sink": "postfix", "postfix": "postfix", "wrk": "wrk"}


def which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in SBIN:
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    return None


def ensure_tools(install: bool) -> tuple[dict[str, str], list[str]]:
    """The C load/sink tools; installs them (Debian, as root) when allowed. Returns
    (name -> path, notes)."""
    notes: list[str] = []
    missing = sorted({pkg for tool, pkg in TOOLS.items() if which(tool) is None})
    if missing and install and os.geteuid() == 0 and which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        # No configuration: the package then starts no system Postfix on port 25
        # (and where policy-rc.d forbids it, none is started anyway).
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["debconf-set-selections"], input=b"postfix postfix/main_mailer_type select No configuration\n",
                           timeout=30, check=False)
        print(f"installing {' '.join(missing)} (apt-get)...", flush=True)
        try:
            subprocess.run(["apt-get", "update", "-q"], env=env, timeout=300, check=False, stdout=subprocess.DEVNULL)
            subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=env,
                           timeout=600, check=False, stdout=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            notes.append("apt-get timed out")
        if "postfix" in missing and port_open(25):
            notes.append("a system Postfix listens on port 25 after the install: stopping it")
            subprocess.run(["postfix", "stop"], timeout=60, check=False, capture_output=True)
    tools = {t: p for t in TOOLS if (p := which(t))}
    for pkg in sorted({pkg for tool, pkg in TOOLS.items() if tool not in tools}):
        why = "not installed" + ("" if install else " (--smoke and --no-install never install)")
        if install and os.geteuid() != 0:
            why += " and not root: apt-get install postfix wrk"
        notes.append(f"Debian package {pkg} {why}")
    return tools, notes


# ---------------------------------------------------------------------------------
# processes: the sink, Postfix, relay, the baselines


class Sink:
    """smtp-sink on loopback: counts DATA transactions (its -c counters on stdout)."""

    def __init__(self, exe: str) -> None:
        self.port = free_port()
        self.count = 0
        self.proc = subprocess.Popen([exe, "-c", "-u", "nobody", "-h", "sink.bench", f"{HOST}:{self.port}", "1024"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        buf = b""
        while chunk := self.proc.stdout.read1(65536):  # type: ignore[attr-defined]
            buf = (buf + chunk)[-4096:]
            found = re.findall(rb"mesg=(\d+)", buf)
            if found:
                self.count = int(found[-1])

    async def started(self) -> "Sink":
        if not await wait_until(lambda: port_open(self.port), 10, 0.05):
            raise RuntimeError("smtp-sink did not start")
        return self

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Postfix:
    """Postfix as a relay to the sink: its own config_directory, queue and log under
    `root`, smtpd on its own loopback port, stopped by stop()."""

    MASTER = """{listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

    def __init__(self, exe: str, root: Path, sink_port: int) -> None:
        self.exe = exe
        self.root = root
        self.conf = root / "conf"
        self.port = free_port()
        self.running = False
        for d in ("conf", "queue", "data", "log"):
            (root / d).mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)
        for d in ("data", "log"):
            shutil.chown(root / d, "postfix")
        (self.conf / "main.cf").write_text(f"""compatibility_level = 3.6
queue_directory = {root / 'queue'}
data_directory = {root / 'data'}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench
mydomain = bench
mydestination =
inet_interfaces = {HOST}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [{HOST}]:{sink_port}
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
local_recipient_maps =
smtputf8_enable = no
smtp_tls_security_level = none
smtpd_tls_security_level = none
biff = no
maillog_file_prefixes = {root}
maillog_file = {root / 'log' / 'maillog'}
""")
        (self.conf / "master.cf").write_text(self.MASTER.format(listen=f"{HOST}:{self.port}"))

    async def start(self) -> "Postfix":
        r = subprocess.run([self.exe, "-c", str(self.conf), "start"], capture_output=True, text=True, timeout=60)
        self.running = True
        if r.returncode or not await wait_until(lambda: port_open(self.port), 20, 0.05):
            self.stop()
            raise RuntimeError(f"postfix did not start (exit {r.returncode}): {r.stderr.strip()} "
                               f"{self.log_tail()}")
        return self

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "log" / "maillog").read_text(errors="replace")[-1500:]
        return ""

    def _master_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.root / "queue" / "pid" / "master.pid").read_text().strip())
        return None

    def cpu(self) -> float:
        """CPU seconds of the whole Postfix instance so far (master and its live children)."""
        pid = self._master_pid()
        return tree_cpu(pid) if pid else NAN

    def stop(self) -> None:
        if not self.running:
            return
        pid = self._master_pid()
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([self.exe, "-c", str(self.conf), "stop"], capture_output=True, timeout=60)
        if pid and _alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        self.running = False
        shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def tree(pid: int) -> list[int]:
    """pid and its descendants (from /proc/PID/task/*/children)."""
    out, todo = [], [pid]
    while todo and len(out) < 1000:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo += [int(c) for c in f.read().split()]
    return out


def tree_cpu(pid: int) -> float:
    from _common import proc_cpu
    total = 0.0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            total += proc_cpu(p)
    return total


def status_kb(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    return 0


def tree_rss_mb(pid: int) -> float:
    return sum(status_kb(p, "VmRSS") for p in tree(pid)) / 1024


# ---------------------------------------------------------------------------------
# measurements


@dataclass
class Measure:
    accept: float = NAN  # messages accepted per second (smtp-source done)
    delivered: float = NAN  # transactions arriving at the sink per second
    cpu_ms: float = NAN  # server CPU per transaction delivered
    note: str = ""


@dataclass
class Row:
    number: str
    scenario: str
    relay: str = "-"
    baselines: str = "-"
    ratio: str = "-"
    target: str = ""
    result: str = "SKIP"
    why: str = ""


@dataclass
class Suite:
    args: argparse.Namespace
    tools: dict[str, str]
    tmp: Path
    children: list[Child] = field(default_factory=list)
    postfixes: list[Postfix] = field(default_factory=list)
    sinks: list[Sink] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    profiles: list[tuple[str, str]] = field(default_factory=list)

    def say(self, line: str) -> None:
        self.log.append(line)
        print(f"  {line}", flush=True)

    def has(self, *names: str) -> bool:
        return all(n in self.tools for n in names)

    async def stop_all(self) -> None:
        for c in self.children:
            await c.stop()
        for p in self.postfixes:
            p.stop()
        for s in self.sinks:
            s.stop()

    async def start_relay(self, name: str, upstream_port: int, max_recipients: int = 200) -> tuple[Child, int, int]:
        wd = self.tmp / f"{name}-{len(self.children)}"
        wd.mkdir()
        smtp_port, http_port = free_port(), free_port()
        child = relay_child(wd, relay_config(workdir=wd, smtp_port=smtp_port, http_port=http_port,
                                             upstream_port=upstream_port, connections=self.args.connections,
                                             processes=self.args.processes, max_recipients=max_recipients),
                            smtp_port, http_port)
        self.children.append(child)
        await child.start(timeout=30)
        return child, smtp_port, http_port

    async def start_forwarder(self, upstream_port: int) -> tuple[Child, int]:
        wd = self.tmp / f"forwarder-{len(self.children)}"
        wd.mkdir()
        port = free_port()
        child = Child("forwarder", [sys.executable, str(BENCH / "_baselines.py"), "forwarder", str(port),
                                    str(upstream_port), str(self.args.connections)],
                      cwd=wd, log=wd / "forwarder.log", ports=[port])
        self.children.append(child)
        await child.start()
        return child, port

    async def smtp_source(self, port: int, msgfile: Path, n: int, rcpts: int, sessions: int,
                          limit: float) -> tuple[float, int, str]:
        """smtp-source: n messages over `sessions` reused connections; (seconds, exit code, stderr)."""
        argv = [self.tools["smtp-source"], "-d", "-s", str(min(sessions, n)), "-m", str(n), "-r", str(rcpts),
                "-f", SENDER, "-t", RCPT, "-F", str(msgfile), "-M", "client.bench", f"{HOST}:{port}"]
        t0 = time.monotonic()
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE, start_new_session=True)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), limit)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            return time.monotonic() - t0, -1, f"smtp-source still running after {limit:.0f}s"
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        return time.monotonic() - t0, proc.returncode or 0, err.decode(errors="replace").strip()[-300:]

    async def smtp_run(self, server: str, msgfile: Path, *, n: int, rcpts: int, per_message: int,
                       sink: Sink, profile: str = "") -> Measure:
        """Start the server, warm up, then n messages via smtp-source; wait (bounded) until
        n * per_message transactions reached the sink."""
        child: Child | None = None
        pfx: Postfix | None = None
        if server == "postfix":
            # its own directory in the system's temporary directory: Postfix's daemons run as the
            # postfix user and must reach it (a --workdir such as pytest's tmp_path is mode 0700)
            pfx = Postfix(self.tools["postfix"], Path(tempfile.mkdtemp(prefix="relay-suite-postfix-")), sink.port)
            self.postfixes.append(pfx)
            await pfx.start()
            port = pfx.port
            cpu: Callable[[], float] = pfx.cpu
        elif server == "forwarder":
            child, port = await self.start_forwarder(sink.port)
            cpu = child.cpu
        else:
            child, port, _ = await self.start_relay(server, sink.port)
            cpu = lambda: tree_cpu(child.pid)  # noqa: E731 - every serving process
        spy = PySpy(child.pid, child.cwd / "py-spy.txt") if profile and child is not None else None
        m = Measure()
        limit = self.args.time_limit
        try:
            warm = min(5 if self.args.smoke else 20, n)
            c0 = sink.count
            _, rc, err = await self.smtp_source(port, msgfile, warm, rcpts, self.args.sessions, limit)
            if rc or not await wait_until(lambda: sink.count - c0 >= warm * per_message, limit, 0.01):
                m.note = f"warm-up failed: exit {rc} {err}; {sink.count - c0}/{warm * per_message} at the sink"
                return m
            await asyncio.sleep(0.2)
            c0, cpu0, t0 = sink.count, cpu(), time.monotonic()
            secs, rc, err = await self.smtp_source(port, msgfile, n, rcpts, self.args.sessions, limit)
            want = n * per_message
            done = await wait_until(lambda: sink.count - c0 >= want, limit, 0.005)
            t1 = time.monotonic()
            m.accept = n / secs if not rc else NAN
            m.delivered = (sink.count - c0) / (t1 - t0) if done else NAN
            m.cpu_ms = 1000 * (cpu() - cpu0) / max(1, sink.count - c0)
            if rc:
                m.note = f"smtp-source exit {rc}: {err}"
            elif not done:
                m.note = f"only {sink.count - c0}/{want} at the sink within {limit:.0f}s"
            return m
        finally:
            if child is not None:
                code = await child.stop()
                if code not in (0, None) and not m.note:
                    m.note = f"{server} exited {code}"
            if spy is not None and child is not None:
                await spy.wait()
                self.profiles.append((profile, summarize_collapsed(spy.out)))
            if pfx is not None:
                pfx.stop()


def fmt_rate(v: float) -> str:
    return "-" if v != v else f"{v:,.0f}/s"


def median(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else NAN


def verdict(ok: bool | None) -> str:
    return "SKIP" if ok is None else ("PASS" if ok else "MISS")


# ---------------------------------------------------------------------------------
# scenarios 1-4: SMTP


async def smtp_scenarios(s: Suite) -> list[Row]:
    a = s.args
    rows = [Row("1", "untracked 5 KB, 1 rcpt", target=">= 1.0x forwarder and >= 1.0x Postfix"),
            Row("2", "tracked 5 KB HTML, 10 links + pixel", target=">= 0.8x forwarder"),
            Row("3", "tracked 100 KB newsletter, 40 links + text", target=">= 0.7x forwarder (same message)"),
            Row("4", f"fan-out: newsletter to {a.fanout} rcpts", target=">= 0.8x forwarder msgs/s (100 KB)")]
    if not s.has("smtp-source", "smtp-sink"):
        for r in rows:
            r.why = "no smtp-source/smtp-sink (Debian package postfix)"
        return rows
    from instrument_bench import newsletter
    files = {}
    for name, data in (("plain5k", build_message(5120, "plain")), ("tracked5k", build_message(5120, "tracked")),
                       ("news", b"X-SES-CONFIGURATION-SET: tracked\r\n" + newsletter())):
        # smtp-source appends CRLF to each line itself
        files[name] = s.tmp / f"{name}.eml"
        files[name].write_bytes(data.replace(b"\r\n", b"\n"))
    sink = await Sink(s.tools["smtp-sink"]).started()
    s.sinks.append(sink)
    plan: list[tuple[str, str, str, int, int, int]] = [  # key, server, file, messages, rcpts, transactions each
        ("fwd5k", "forwarder", "tracked5k", a.messages, 1, 1),
        ("relay1", "relay", "plain5k", a.messages, 1, 1),
        ("relay2", "relay", "tracked5k", a.messages, 1, 1),
        ("fwd100k", "forwarder", "news", a.big_messages, 1, 1),
        ("relay3", "relay", "news", a.big_messages, 1, 1),
        ("relay4", "relay", "news", a.fanout_messages, a.fanout, a.fanout),
    ]
    if s.has("postfix"):
        plan.insert(1, ("postfix5k", "postfix", "plain5k", a.messages, 1, 1))
    results: dict[str, list[Measure]] = {k[0]: [] for k in plan}
    for rnd in range(1, a.rounds + 1):
        k = (rnd - 1) % len(plan)
        for key, server, file, n, rcpts, per in plan[k:] + plan[:k]:  # rotated from round to round (drift)
            profile = f"{key} (round 1)" if a.profile and rnd == 1 and server == "relay" else ""
            try:
                m = await s.smtp_run(server, files[file], n=n, rcpts=rcpts, per_message=per, sink=sink,
                                     profile=profile)
            except RuntimeError as e:
                m = Measure(note=str(e)[:300])
            results[key].append(m)
            s.say(f"#{rnd} {key}: accepted {fmt_rate(m.accept)}, delivered {fmt_rate(m.delivered)} transactions, "
                  f"server CPU {m.cpu_ms:.2f} ms per transaction" + (f"; {m.note}" if m.note else ""))
    med = {key: Measure(accept=median([m.accept for m in ms_]), delivered=median([m.delivered for m in ms_]),
                        cpu_ms=median([m.cpu_ms for m in ms_]),
                        note="; ".join(dict.fromkeys(m.note for m in ms_ if m.note)))
           for key, ms_ in results.items()}
    for key, m in med.items():
        s.say(f"median {key}: delivered {fmt_rate(m.delivered)}, accepted {fmt_rate(m.accept)}, "
              f"CPU {m.cpu_ms:.2f} ms/transaction")

    def fill(row: Row, key: str, bases: list[tuple[str, str, float]]) -> None:
        m = med[key]
        row.relay = f"{fmt_rate(m.delivered)} ({m.cpu_ms:.1f} ms CPU)"
        row.baselines = "; ".join(f"{label} {fmt_rate(med[b].delivered)} ({med[b].cpu_ms:.1f} ms)"
                                  for label, b, _ in bases)
        ratios = [(label, m.delivered / med[b].delivered, want) for label, b, want in bases]
        row.ratio = "; ".join(f"{x:.2f}x {label}" for label, x, _ in ratios)
        if any(x != x for _, x, _ in ratios):
            row.result = "MISS"
            row.why = "; ".join(x for x in [m.note] + [med[b].note for _, b, _ in bases] if x) or "no figure"
        else:
            row.result = verdict(all(x >= want for _, x, want in ratios))
            row.why = m.note
    fill(rows[0], "relay1", [("fwd", "fwd5k", 1.0)] + ([("postfix", "postfix5k", 1.0)] if s.has("postfix") else []))
    if not s.has("postfix"):
        rows[0].why = (rows[0].why + "; " if rows[0].why else "") + "Postfix column skipped: no postfix"
    fill(rows[1], "relay2", [("fwd", "fwd5k", 0.8)])
    fill(rows[2], "relay3", [("fwd", "fwd100k", 0.7)])
    fill(rows[3], "relay4", [("fwd msgs/s", "fwd100k", 0.8)])
    return rows


# ---------------------------------------------------------------------------------
# scenario 5: render one more recipient's copy (instrument_bench's logic)


def render_scenario(s: Suite) -> Row:
    import email
    from email.policy import compat32

    from instrument_bench import best, newsletter

    from relay.instrument import TrackingOptions, prepare
    row = Row("5", "render one more recipient's copy (100 KB)", target="<= 3% of parse + analyse")
    raw = newsletter()
    options = TrackingOptions(open=True, click=True)
    prepared = prepare(raw, options)
    urls = [f"https://t.example.net/c/{'x' * 120}{i}" for i in range(len(prepared.links))]
    reps = 3 if s.args.smoke else 20
    prep, rend, parse = [], [], []
    for _ in range(s.args.rounds):
        parse.append(best(lambda: email.message_from_bytes(raw, policy=compat32), reps))
        prep.append(best(lambda: prepare(raw, options), reps))
        rend.append(best(lambda: prepared.render("https://t.example.net/o/" + "y" * 100, urls), reps * 2))
    p, r = median(prep), median(rend)
    row.relay = f"render {r * 1e3:.2f} ms"
    row.baselines = f"prepare {p * 1e3:.2f} ms (stdlib parse {median(parse) * 1e3:.2f} ms)"
    row.ratio = f"{r / p:.1%}"
    row.result = verdict(r / p <= 0.03)
    s.say(f"render {r * 1e3:.3f} ms, prepare {p * 1e3:.3f} ms: {r / p:.2%}")
    return row


# ---------------------------------------------------------------------------------
# scenario 6: tracking hits with wrk


@dataclass
class Wrk:
    rps: float = NAN
    p99: float = NAN  # seconds
    requests: int = 0
    bad: int = 0
    note: str = ""


def _seconds(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if not m:
        return NAN
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(2)]


def parse_wrk(out: str) -> Wrk:
    w = Wrk()
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        w.rps = float(m.group(1))
    if m := re.search(r"^\s*99%\s+(\S+)", out, re.M):
        w.p99 = _seconds(m.group(1))
    if m := re.search(r"(\d+) requests in", out):
        w.requests = int(m.group(1))
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        w.bad += int(m.group(1))
    if m := re.search(r"Socket errors:.*", out):
        w.note = m.group(0)
        w.bad += sum(int(x) for x in re.findall(r"\d+", m.group(0)))
    return w


async def run_wrk(s: Suite, base: str, paths: list[str], seconds: float) -> Wrk:
    script = s.tmp / f"wrk-{len(paths)}-{time.monotonic_ns()}.lua"
    quoted = ",".join('"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"' for p in paths)
    script.write_text(f"local paths = {{{quoted}}}\nlocal i = 0\n"
                      "request = function()\n  i = i + 1\n  return wrk.format('GET', paths[(i % #paths) + 1])\nend\n")
    argv = [s.tools["wrk"], "-t1", f"-c{s.args.http_connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(script), base]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                                                start_new_session=True)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 30)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return Wrk(note="wrk did not finish")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return parse_wrk(out.decode(errors="replace"))


def count_events(db: Path, kind: str) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return int(con.execute("SELECT count(*) FROM events WHERE event_type = ?", (kind,)).fetchone()[0])
    finally:
        con.close()


async def tracking_scenario(s: Suite) -> list[Row]:
    rows = [Row("6a", "pixel hits /o/", target=">= 0.85x bare aiohttp, all recorded, p99 <= 2x"),
            Row("6b", "redirect hits /c/", target=">= 0.85x bare aiohttp, all recorded, p99 <= 2x")]
    if not s.has("wrk"):
        for r in rows:
            r.why = "no wrk (Debian package wrk)"
        return rows
    from tracking_hits import tracking_urls
    capture = CaptureHandler(keep=True)
    upstream = await CaptureUpstream(capture).start()
    try:
        relay, smtp_port, http_port = await s.start_relay("relay-http", upstream.port)
        rcpts = [f"reader{i}@example.org" for i in range(5)]
        async with aiosmtplib.SMTP(hostname=HOST, port=smtp_port, timeout=30) as smtp:
            await smtp.sendmail(SENDER, rcpts, build_message(5120, "tracked", to=rcpts[0]))
        if not await wait_until(lambda: capture.count >= len(rcpts), 30):
            for r in rows:
                r.result, r.why = "MISS", f"relay delivered {capture.count}/{len(rcpts)} copies for the tokens"
            return rows
    finally:
        await upstream.stop()
    opens, clicks = tracking_urls(capture.messages)
    spy = PySpy(relay.pid, relay.cwd / "py-spy.txt") if s.args.profile else None
    wd = s.tmp / "baseline-http"
    wd.mkdir()
    base_port = free_port()
    baseline = Child("bare aiohttp", [sys.executable, str(BENCH / "_baselines.py"), "http", str(base_port)],
                     cwd=wd, log=wd / "http.log", ports=[base_port])
    s.children.append(baseline)
    await baseline.start()
    db = relay.cwd / "relay.db"
    await asyncio.sleep(0.5)
    prefix = f"http://{HOST}:{http_port}"
    results: dict[tuple[str, str], list[Wrk]] = {}
    recorded: dict[str, list[tuple[int, int]]] = {"open": [], "click": []}
    for rnd in range(1, s.args.rounds + 1):
        order = [("relay", http_port), ("bare", base_port)]
        if rnd % 2 == 0:
            order.reverse()
        for kind, urls, event in (("open", opens, "Open"), ("click", clicks, "Click")):
            paths = [u[len(prefix):] for u in urls]
            if rnd == 1 and not s.args.smoke:  # warm-up: connections and code paths
                for name, port in order:
                    before = count_events(db, event) if name == "relay" else 0
                    w = await run_wrk(s, f"http://{HOST}:{port}", paths, 1)
                    if name == "relay":  # its events are stored before the measured run counts its own
                        await wait_until(lambda b=before, w=w, e=event: count_events(db, e) - b >= w.requests,
                                         s.args.time_limit, 0.02)
                        await asyncio.sleep(0.2)
            for name, port in order:
                before = count_events(db, event) if name == "relay" else 0
                w = await run_wrk(s, f"http://{HOST}:{port}", paths, s.args.http_seconds)
                results.setdefault((name, kind), []).append(w)
                msg = f"#{rnd} {name} {kind}: {w.rps:,.0f} hits/s, p99 {w.p99 * 1e3:.2f} ms, {w.requests} answered"
                if name == "relay":
                    # every answered hit is recorded (hits in flight when wrk stopped may add a few)
                    await wait_until(lambda b=before, w=w, e=event: count_events(db, e) - b >= w.requests,
                                     s.args.time_limit, 0.02)
                    got = count_events(db, event) - before
                    recorded[kind].append((got, w.requests))
                    msg += f", {got} {event} events recorded"
                s.say(msg + (f"; {w.note}" if w.note else ""))
    if spy is not None:
        await relay.stop()
        await spy.wait()
        s.profiles.append(("tracking hits, every round", summarize_collapsed(spy.out)))
    for row, kind in zip(rows, ("open", "click"), strict=True):
        rl, bl = results[("relay", kind)], results[("bare", kind)]
        r_rps, b_rps = median([w.rps for w in rl]), median([w.rps for w in bl])
        r_p99, b_p99 = median([w.p99 for w in rl]), median([w.p99 for w in bl])
        got, want = sum(g for g, _ in recorded[kind]), sum(w for _, w in recorded[kind])
        bad = sum(w.bad for w in rl)
        row.relay = f"{r_rps:,.0f}/s p99 {r_p99 * 1e3:.2f} ms"
        row.baselines = f"bare {b_rps:,.0f}/s p99 {b_p99 * 1e3:.2f} ms"
        row.ratio = f"{r_rps / b_rps:.2f}x, p99 {r_p99 / b_p99:.2f}x"
        all_recorded = got >= want and bad == 0
        row.result = verdict(r_rps / b_rps >= 0.85 and r_p99 <= 2 * b_p99 and all_recorded)
        row.why = f"{got}/{want} hits recorded" + (f", {bad} errors" if bad else "")
    return rows


# ---------------------------------------------------------------------------------
# scenario 7: memory


async def memory_run(s: Suite, message: bytes, rcpts: list[str], limit: float) -> tuple[float, float, int, str]:
    """A fresh relay: idle RSS, then one message; peak RSS (the process tree, sampled every
    10 ms, and the kernel's high-water mark of each process) until every copy arrived."""
    capture = CaptureHandler()
    upstream = await CaptureUpstream(capture).start()
    try:
        relay, smtp_port, _ = await s.start_relay("relay-mem", upstream.port, max_recipients=max(200, len(rcpts)))
        await asyncio.sleep(0.3 if s.args.smoke else 1.0)
        idle = tree_rss_mb(relay.pid)
        peak = idle
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, tree_rss_mb(relay.pid))
                await asyncio.sleep(0.01)
        sampler = asyncio.create_task(sample())
        note = ""
        try:
            async with aiosmtplib.SMTP(hostname=HOST, port=smtp_port, timeout=max(60, limit)) as smtp:
                await smtp.sendmail(SENDER, rcpts, message)
            if not await wait_until(lambda: capture.count >= len(rcpts), limit, 0.05):
                note = f"only {capture.count}/{len(rcpts)} copies delivered within {limit:.0f}s"
        except (aiosmtplib.SMTPException, OSError) as e:
            note = f"{type(e).__name__}: {e}"[:200]
        finally:
            done.set()
            await sampler
        hwm = sum(status_kb(p, "VmHWM") for p in tree(relay.pid)) / 1024
        peak = max(peak, hwm)
        count = capture.count
        await relay.stop()
        return idle, peak, count, note
    finally:
        await upstream.stop()


async def memory_scenario(s: Suite) -> list[Row]:
    a = s.args
    big = a.big_mb
    rows = [Row("7a", f"memory: one {big} MB message (tracked)", target=f"peak <= idle + {3 * big} MB"),
            Row("7b", f"memory: one message to {a.many_rcpts:,} rcpts (tracked)",
                target="peak <= idle + 150 MB, completes")]
    body = build_message(big * 1024 * 1024, "tracked")
    idle, peak, n, note = await memory_run(s, body, [RCPT], a.time_limit)
    rows[0].relay, rows[0].baselines = f"+{peak - idle:.0f} MB", f"idle {idle:.0f} MB"
    rows[0].ratio = f"{(peak - idle) / big:.1f}x message"
    rows[0].result, rows[0].why = verdict(n == 1 and peak - idle <= 3 * big), note
    s.say(f"{big} MB message: idle {idle:.0f} MB, peak {peak:.0f} MB, {n} delivered {note}")
    rcpts = [f"r{i}@example.org" for i in range(a.many_rcpts)]
    idle, peak, n, note = await memory_run(s, build_message(5120, "tracked"), rcpts, a.many_limit)
    rows[1].relay, rows[1].baselines = f"+{peak - idle:.0f} MB", f"idle {idle:.0f} MB"
    rows[1].ratio = f"{n:,}/{len(rcpts):,} delivered"
    rows[1].result, rows[1].why = verdict(n == len(rcpts) and peak - idle <= 150), note
    s.say(f"{len(rcpts)} recipients: idle {idle:.0f} MB, peak {peak:.0f} MB, {n} delivered {note}")
    return rows


# ---------------------------------------------------------------------------------
# scenario 8: relay stats


async def stats_scenario(s: Suite) -> Row:
    import random

    from stats_bench import fill

    from relay.store import Store
    a = s.args
    row = Row("8", f"relay stats over {a.events:,} events", target="< 1 s")
    path = Path(a.stats_db) if a.stats_db else s.tmp / "stats.db"
    store = Store(str(path))
    await store.open()
    try:
        have = (await store.fetchone("SELECT COUNT(*) FROM event_log"))[0]  # type: ignore[index]
        if not have:
            t = time.perf_counter()
            have = await fill(store, a.events, random.Random(7))
            s.say(f"wrote {have:,} events in {time.perf_counter() - t:.1f} s")
    finally:
        await store.close()
    cfg = s.tmp / "stats.toml"
    cfg.write_text(f'[storage]\npath = "{path}"\n')
    times = []
    for _ in range(max(3, a.rounds)):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "relay.cli", "stats", "--config", str(cfg)], cwd=s.tmp,
                           capture_output=True, timeout=120)
        times.append(time.perf_counter() - t)
        if r.returncode:
            row.result, row.why = "MISS", f"relay stats exited {r.returncode}: {r.stderr.decode()[-200:]}"
            return row
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import relay.cli"], cwd=s.tmp, capture_output=True, timeout=60)
    startup = time.perf_counter() - t
    med = median(times)
    row.events = have  # type: ignore[attr-defined]
    row.scenario = f"relay stats over {have:,} events"
    row.relay = f"{med * 1e3:,.0f} ms (whole command)"
    row.baselines = f"start-up alone {startup * 1e3:,.0f} ms"
    row.ratio = f"{med:.2f} s"
    row.result = verdict(med < 1.0)
    s.say(f"relay stats: {', '.join(f'{x * 1e3:.0f}' for x in times)} ms; python -c 'import relay.cli' {startup * 1e3:.0f} ms")
    return row


# ---------------------------------------------------------------------------------
# report


def versions(tools: dict[str, str]) -> dict[str, str]:
    from importlib.metadata import version
    out = {}
    for pkg in ("aiosmtpd", "aiohttp", "aiosmtplib"):
        with contextlib.suppress(Exception):
            out[pkg] = version(pkg)
    if "postfix" in tools:
        with contextlib.suppress(Exception):
            out["postfix"] = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True,
                                            timeout=10).stdout.strip()
    if "wrk" in tools:
        with contextlib.suppress(Exception):
            first = subprocess.run([tools["wrk"], "--version"], capture_output=True, text=True, timeout=10)
            out["wrk"] = (first.stdout + first.stderr).split()[1]
    return out


def machine() -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "relay"], capture_output=True,
                           text=True).stdout.strip()
    return {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "cpu": cpu, "cores": str(os.cpu_count()),
            "kernel": platform.release(), "python": platform.python_version(),
            "relay": commit + (" (relay/ modified)" if dirty else "")}


def render_table(rows: list[Row]) -> list[str]:
    head = ["#", "scenario", "relay", "baselines (same run)", "ratio", "target", "result"]
    body = [[r.number, r.scenario, r.relay, r.baselines, r.ratio, r.target, r.result] for r in rows]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(x.replace("|", "/") for x in b) + " |" for b in body]
    notes = [f"- {r.number}: {r.why}" for r in rows if r.why]
    return out + ([""] + notes if notes else [])


async def amain(a: argparse.Namespace) -> int:
    tools, notes = ensure_tools(install=not (a.smoke or a.no_install))
    if a.no_tools:
        tools = {}
        notes.append("--no-tools: SMTP and HTTP rows skipped")
    tmp = Path(tempfile.mkdtemp(prefix="relay-suite-", dir=a.workdir))
    tmp.chmod(0o755)
    s = Suite(a, tools, tmp)
    info = machine()
    vers = versions(tools)
    print(f"relay benchmark suite{' (smoke)' if a.smoke else ''}: {info['date']}, {info['cores']} CPUs "
          f"({info['cpu']}), relay {info['relay']}, {a.rounds} round(s), work dir {tmp}", flush=True)
    for n in notes:
        print(f"  {n}", flush=True)
    calib = [] if a.smoke else [cpu_calibration()]
    if calib:
        print(f"  {calib[0]}", flush=True)
    steal = Steal()
    rows: list[Row] = []
    only = set(a.only) if a.only else None
    stages: list[tuple[str, Any]] = [("smtp", smtp_scenarios), ("render", render_scenario),
                                     ("http", tracking_scenario), ("memory", memory_scenario),
                                     ("stats", stats_scenario)]
    t_start = time.monotonic()
    try:
        for name, stage in stages:
            if only is not None and name not in only:
                continue
            print(f"[{name}]", flush=True)
            try:
                got = stage(s)
                got = await got if asyncio.iscoroutine(got) else got
            except (RuntimeError, OSError, subprocess.SubprocessError, sqlite3.Error) as e:
                s.say(f"{name} failed: {type(e).__name__}: {e}"[:500])
                got = []
                fail = Row("?", f"{name} (failed)", result="MISS", why=f"{type(e).__name__}: {str(e)[:200]}")
                got = [fail]
            finally:
                await s.stop_all()
            rows += got if isinstance(got, list) else [got]
    finally:
        await s.stop_all()
        if a.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if calib:
        calib.append(cpu_calibration())
    elapsed = time.monotonic() - t_start
    table = render_table(rows)
    for name, summary in s.profiles:
        print(f"\npy-spy profile of relay, {name} (whole process life):\n{summary}")
    print()
    print("\n".join(table))
    lines = [f"# relay benchmark suite{' (smoke: tiny counts, figures meaningless)' if a.smoke else ''}", "",
             f"- date: {info['date']}; suite time {elapsed:.0f} s; rounds {a.rounds} (medians)",
             f"- machine: {info['cpu']}, {info['cores']} cores, kernel {info['kernel']}, Python {info['python']}",
             f"- relay: {info['relay']}; processes: {a.processes or 'relay default'}; "
             f"upstream connections {a.connections}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()),
             f"- hypervisor steal during the run: {steal.percent():.1f}%"]
    lines += [f"- {c}" for c in calib] + [f"- {n}" for n in notes]
    lines += ["", *table, ""]
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"\nwritten to {out}")
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description="relay's benchmark suite (issue 9): one table, relay vs baselines")
    p.add_argument("--smoke", action="store_true", help="tiny counts, 1 round, no installs (~20 s)")
    p.add_argument("--rounds", type=int, default=None, help="rounds per scenario, medians reported (default 3)")
    p.add_argument("--messages", type=int, default=None, help="5 KB messages per SMTP run (default 2000)")
    p.add_argument("--big-messages", type=int, default=None, help="100 KB newsletters per SMTP run (default 300)")
    p.add_argument("--fanout", type=int, default=100, help="recipients per newsletter in row 4 (default 100)")
    p.add_argument("--fanout-messages", type=int, default=None, help="newsletters sent in row 4 (default 10)")
    p.add_argument("--sessions", type=int, default=10, help="smtp-source's parallel sessions (default 10)")
    p.add_argument("--connections", type=int, default=4,
                   help="upstream connections: relay's upstream.connections and the forwarder's workers (default 4)")
    p.add_argument("--processes", type=int, default=None,
                   help="relay's [server] processes (default: not set, relay's own default)")
    p.add_argument("--http-seconds", type=int, default=None, help="wrk run per endpoint and server (default 5)")
    p.add_argument("--http-connections", type=int, default=4, help="wrk connections (default 4)")
    p.add_argument("--big-mb", type=int, default=None, help="size of row 7a's message in MB (default 25)")
    p.add_argument("--many-rcpts", type=int, default=None, help="recipients in row 7b (default 10000)")
    p.add_argument("--events", type=int, default=None, help="events for row 8 (default 1,000,000)")
    p.add_argument("--stats-db", default=None, help="reuse (or create) this file for row 8")
    p.add_argument("--time-limit", type=float, default=None, help="bound on each run's waits, seconds (default 120)")
    p.add_argument("--only", nargs="+", choices=["smtp", "render", "http", "memory", "stats"])
    p.add_argument("--profile", action="store_true",
                   help="attach py-spy (pip install py-spy) to relay in round 1 of rows 1-4 and in rows 6, "
                        "and print where it spent its time")
    p.add_argument("--no-install", action="store_true", help="never apt-get install")
    p.add_argument("--no-tools", action="store_true", help="act as if smtp-source/sink and wrk were missing")
    p.add_argument("--output", default=str(BENCH / "results" / "latest.md"))
    p.add_argument("--workdir", default=None)
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases)")
    a = p.parse_args()
    smoke = a.smoke
    defaults = {"rounds": (1, 3), "messages": (40, 2000), "big_messages": (10, 300), "fanout_messages": (1, 10),
                "http_seconds": (1, 5), "big_mb": (1, 25), "many_rcpts": (100, 10_000),
                "events": (2000, 1_000_000), "time_limit": (15.0, 120.0)}
    for key, (small, full) in defaults.items():
        if getattr(a, key) is None:
            setattr(a, key, small if smoke else full)
    a.many_limit = 30.0 if smoke else 600.0
    if smoke:
        a.fanout = min(a.fanout, 20)
    if a.profile and not Path(sys.executable).with_name("py-spy").exists():
        p.error(f"--profile needs py-spy next to {sys.executable} (pip install py-spy)")
    if min(a.rounds, a.messages, a.big_messages, a.fanout, a.fanout_messages, a.sessions, a.connections) < 1:
        p.error("counts must be positive")

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupted)  # stop like Ctrl-C: the finally blocks stop every child
    try:
        sys.exit(asyncio.run(amain(a)))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
