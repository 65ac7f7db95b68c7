# Tracking server hits/second: a few concurrent aiohttp clients (keep-alive, one
# connection each) make a bounded number of requests to /o/{token} (pixel) and
# /c/{token} (302 redirect) of a running `relay serve`, with real tokens taken from
# a tracked message relay delivered to a capture upstream. Baseline, same run: a
# minimal aiohttp app (own process) answering a static pixel / static 302 with
# web.Response(...). Afterwards: how many Open/Click events reached relay's sqlite
# events table, and how long after the last hit the count was complete.
# --smtp-probe also submits a message every 100 ms while relay is being hit and reports
# how long its 250 took (relay answers 250 only after the spool commit, and the spool
# shares the store's writer with the Open/Click events). Figures only: nothing here
# asserts on timing.
# The load comes from wrk (Debian package `wrk`) when it is installed, so that the load
# generator, written in C, leaves the servers their CPU; else (or with --load aiohttp)
# from the aiohttp clients in this process.
#
#   .venv/bin/python bench/tracking_hits.py [--load auto|wrk|aiohttp] [--requests N | --duration S]
#       [--clients C] [--rounds K] [--smtp-probe]
from __future__ import annotations

import argparse
import asyncio
import email
import html
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from email import policy
from pathlib import Path

import aiohttp
import aiosmtplib

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    BENCH,
    HOST,
    SENDER,
    CaptureHandler,
    CaptureUpstream,
    Child,
    Steal,
    build_message,
    cpu_calibration,
    free_port,
    fs_of,
    grid,
    ms,
    percentile,
    rate,
    relay_child,
    relay_config,
    self_cpu,
    wait_until,
)

EVENT_OF = {"open": "Open", "click": "Click"}


@dataclass
class Run:
    server: str
    kind: str  # open | click
    ok: int = 0
    errors: int = 0
    first_error: str = ""
    seconds: float = float("nan")
    lat: list[float] = field(default_factory=list)
    wrk_p50: float = float("nan")  # latency percentiles as wrk reports them (wrk load only)
    wrk_p99: float = float("nan")
    server_cpu: float = float("nan")
    server_main_cpu: float = float("nan")  # the event-loop thread
    server_other_cpu: float = float("nan")  # all other threads (aiosqlite's among them)
    bench_cpu: float = float("nan")
    events: int | None = None  # rows in relay's events table for this kind, after the wait
    flush: float = float("nan")  # seconds from the last response to the last event row
    last_at: float = 0.0  # monotonic time of the last successful response
    backlog: int = 0  # events not yet in the table when the last response came
    served: int = 0  # hits relay answered in the phase, warm-up included (its /metrics)
    cpu0: float = float("nan")  # the server's CPU seconds when the measured requests began
    cpu_stored: float = float("nan")  # its CPU from then until every event was stored
    round: int = 1

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else float("nan")


def tracking_urls(messages: list[bytes]) -> tuple[list[str], list[str]]:
    """Pixel and click URLs in delivered copies (decoded bodies)."""
    opens: list[str] = []
    clicks: list[str] = []
    for data in messages:
        msg = email.message_from_bytes(data, policy=policy.default)
        for part in msg.walk():
            if part.get_content_maintype() != "text":
                continue
            text = part.get_content()
            opens += re.findall(r'src="(http://127\.0\.0\.1:\d+/o/[A-Za-z0-9_-]+)"', text)
            clicks += [html.unescape(u) for u in re.findall(r'href="(http://127\.0\.0\.1:\d+/c/[^"]+)"', text)]
    return opens, clicks


async def hammer(urls: list[str], *, n: int, clients: int, expect: int, time_limit: float,
                 server: Child) -> Run:
    """n GET requests spread over `clients` keep-alive connections, cycling through urls."""
    run = Run("", "")
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1),
                                      headers={"User-Agent": "relay-bench/1"}) for _ in range(clients)]
    try:
        # Warm-up: a connection per client, and the server's code paths.
        for s in sessions:
            for u in urls[:3]:
                async with s.get(u, allow_redirects=False) as r:
                    await r.read()
        counter = iter(range(n))
        t0 = time.monotonic()
        deadline = t0 + time_limit
        cpu0, self0, (main0, other0) = server.cpu(), self_cpu(), server.thread_cpu()
        run.cpu0 = cpu0
        last = t0

        async def client(s: aiohttp.ClientSession) -> None:
            nonlocal last
            for i in counter:
                if time.monotonic() > deadline:
                    return
                t = time.monotonic()
                try:
                    async with s.get(urls[i % len(urls)], allow_redirects=False) as r:
                        await r.read()
                        status = r.status
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    run.errors += 1
                    run.first_error = run.first_error or f"{type(e).__name__}: {e}"
                    continue
                done = time.monotonic()
                if status != expect:
                    run.errors += 1
                    run.first_error = run.first_error or f"HTTP {status}"
                    continue
                run.ok += 1
                run.lat.append(done - t)
                last = max(last, done)

        await asyncio.gather(*(client(s) for s in sessions))
        run.seconds = last - t0
        run.server_cpu = server.cpu() - cpu0
        main1, other1 = server.thread_cpu()
        run.server_main_cpu, run.server_other_cpu = main1 - main0, other1 - other0
        run.bench_cpu = self_cpu() - self0
        run.lat.sort()
        run.last_at = last
        return run
    finally:
        for s in sessions:
            await s.close()


# Each wrk connection cycles through the paths; done() prints one line for the bench.
_WRK_LUA = """
local paths = {%PATHS%}
local reqs = {}
local n = 0
init = function(args)
  for i, p in ipairs(paths) do
    reqs[i] = wrk.format("GET", p, {["User-Agent"] = "relay-bench/1"})
  end
end
request = function()
  n = n + 1
  return reqs[(n % #reqs) + 1]
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRKRESULT %d %d %d %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_script(urls: list[str], where: Path) -> Path:
    paths = [re.sub(r"^https?://[^/]+", "", u) for u in urls]
    for p in paths:
        if "]==]" in p:
            raise ValueError(f"cannot quote {p!r} for Lua")
    body = _WRK_LUA.replace("%PATHS%", ", ".join(f"[==[{p}]==]" for p in paths))
    where.write_text(body)
    return where


async def wrk_run(base: str, script: Path, *, seconds: float, connections: int) -> dict[str, int]:
    """One wrk run (1 thread, `connections` keep-alive connections, bounded by `seconds`)."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(script), base]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 30)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    line = next((ln for ln in out.decode(errors="replace").splitlines() if ln.startswith("WRKRESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {out.decode(errors='replace')[-2000:]}")
    keys = ("requests", "duration_us", "connect", "read", "write", "status", "timeout", "p50_us", "p99_us")
    return dict(zip(keys, map(int, line.split()[1:]), strict=True))


async def wrk_hammer(urls: list[str], *, seconds: float, clients: int, server: Child, script: Path) -> Run:
    """wrk against one server for `seconds` (after a 1 s warm-up run), with the server's CPU."""
    base = re.match(r"^https?://[^/]+", urls[0])
    assert base is not None
    wrk_script(urls, script)
    await wrk_run(base.group(0), script, seconds=1, connections=clients)  # warm-up
    run = Run("", "")
    cpu0, wrk0, (main0, other0) = server.cpu(), _children_cpu(), server.thread_cpu()
    run.cpu0 = cpu0
    t0 = time.monotonic()
    res = await wrk_run(base.group(0), script, seconds=seconds, connections=clients)
    run.last_at = time.monotonic()
    run.server_cpu = server.cpu() - cpu0
    main1, other1 = server.thread_cpu()
    run.server_main_cpu, run.server_other_cpu = main1 - main0, other1 - other0
    run.bench_cpu = _children_cpu() - wrk0  # wrk's (the one child that ended meanwhile)
    run.seconds = res["duration_us"] / 1e6 or (run.last_at - t0)
    run.errors = res["connect"] + res["read"] + res["write"] + res["status"] + res["timeout"]
    if run.errors:
        run.first_error = ", ".join(f"{k} {res[k]}" for k in ("connect", "read", "write", "status", "timeout")
                                    if res[k])
    run.ok = res["requests"] - res["status"]
    run.wrk_p50, run.wrk_p99 = res["p50_us"] / 1e6, res["p99_us"] / 1e6
    return run


def _children_cpu() -> float:
    import resource
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def served_hits(admin_port: int) -> dict[str, float]:
    """relay's own count of answered hits by kind (its /metrics), so the events check
    does not depend on what the load generator saw (wrk drops replies in flight at its end)."""
    import urllib.request
    with urllib.request.urlopen(f"http://{HOST}:{admin_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r'^relay_tracking_hits_total\{kind="(\w+)"\} (\S+)$', text, re.M)}


async def smtp_probe(port: int, stop: asyncio.Event, time_limit: float) -> list[float]:
    """Submit an untracked message every 100 ms until stopped (bounded); 250 latencies.

    Relay's 250 waits for the spool commit, which shares the store's writer with the
    Open/Click events: this shows what a burst of hits does to mail intake."""
    message = build_message(2048, "plain", to="probe@example.org")
    lat: list[float] = []
    deadline = time.monotonic() + time_limit + 30
    try:
        async with aiosmtplib.SMTP(hostname=HOST, port=port, timeout=60) as smtp:
            while not stop.is_set() and time.monotonic() < deadline and len(lat) < 1000:
                t = time.monotonic()
                await smtp.sendmail(SENDER, ["probe@example.org"], message)
                lat.append(time.monotonic() - t)
                await asyncio.sleep(0.1)
    except (aiosmtplib.SMTPException, OSError) as e:
        print(f"  SMTP probe stopped: {type(e).__name__}: {e}", flush=True)
    return lat


def count_events(db: Path, event_type: str) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return int(con.execute("SELECT count(*) FROM events WHERE event_type = ?", (event_type,)).fetchone()[0])
    finally:
        con.close()


async def wait_events(db: Path, event_type: str, want: int, since: float, limit: float) -> tuple[int, float, int]:
    """Poll (bounded) until `want` rows of event_type exist.

    Returns (count, seconds from `since` until complete, rows still missing at the first look)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        deadline = time.monotonic() + limit
        first = None
        while True:
            n = int(con.execute("SELECT count(*) FROM events WHERE event_type = ?", (event_type,)).fetchone()[0])
            now = time.monotonic()
            first = want - n if first is None else first
            if n >= want or now > deadline:
                return n, (now - since if n >= want else float("nan")), first
            await asyncio.sleep(0.005)
    finally:
        con.close()


COLUMNS = ["", "hits/s", "p50", "p99", "srv CPU us/hit", "srv CPU %", "bench CPU %", "events", "backlog",
           "flush"]


def metrics(r: Run) -> dict[str, float]:
    nan = float("nan")
    p50, p99 = (percentile(r.lat, 50), percentile(r.lat, 99)) if r.lat else (r.wrk_p50, r.wrk_p99)
    return {"rate": r.rate, "p50": p50, "p99": p99,
            "cpu_hit": r.server_cpu / r.ok if r.ok else nan,
            "srv_pct": 100 * r.server_cpu / r.seconds if r.seconds > 0 else nan,
            "bench_pct": 100 * r.bench_cpu / r.seconds if r.seconds > 0 else nan,
            "flush": r.flush, "backlog": float(r.backlog)}


def _row(name: str, m: dict[str, float], events: str) -> list[str]:
    num = lambda v, f: "-" if v != v else f.format(v)  # noqa: E731
    return [name, rate(m["rate"]), ms(m["p50"]), ms(m["p99"]), num(1e6 * m["cpu_hit"], "{:.0f}"),
            num(m["srv_pct"], "{:.0f}"), num(m["bench_pct"], "{:.0f}"), events,
            "-" if events == "-" else f"{m['backlog']:.0f}", "-" if events == "-" else ms(m["flush"])]


def _ratio(name: str, m: dict[str, float], b: dict[str, float]) -> str:
    return (f"{name} / baseline: hits/s {m['rate'] / b['rate']:.2f}x, p50 {m['p50'] / b['p50']:.2f}x, "
            f"p99 {m['p99'] / b['p99']:.2f}x, server CPU per hit {m['cpu_hit'] / b['cpu_hit']:.2f}x")


def table(runs: list[Run], rounds: int) -> str:
    label = lambda r: f"{r.server} {r.kind}" + (f" #{r.round}" if rounds > 1 else "")  # noqa: E731
    events = lambda r: "-" if r.events is None else f"{r.events}/{r.served}"  # noqa: E731
    out = grid(COLUMNS, [_row(label(r), metrics(r), events(r)) for r in runs])
    out.append("")
    for r in runs:
        b = next((x for x in runs if x.server == "baseline" and x.kind == r.kind and x.round == r.round), None)
        if r.server != "baseline" and b is not None and b.ok and r.ok:
            out.append(_ratio(label(r), metrics(r), metrics(b)))
    if rounds > 1:
        keys = list(dict.fromkeys((r.server, r.kind) for r in runs))
        med = {k: {m: statistics.median(metrics(r)[m] for r in runs if (r.server, r.kind) == k)
                   for m in metrics(runs[0])} for k in keys}
        ev = {k: "-" if k[0] == "baseline" else
              f"{sum(r.events or 0 for r in runs if (r.server, r.kind) == k)}/"
              f"{sum(r.served for r in runs if (r.server, r.kind) == k)}" for k in keys}
        out += ["", f"median of {rounds} rounds (events: totals):"]
        out += grid(COLUMNS, [_row(f"{s} {k}", med[(s, k)], ev[(s, k)]) for s, k in keys])
        out += [_ratio(f"{s} {k}", med[(s, k)], med[("baseline", k)])
                for s, k in keys if s != "baseline" and ("baseline", k) in med]
    for r in runs:
        if r.errors:
            out.append(f"{label(r)}: {r.errors} errors, first: {r.first_error}")
    return "\n".join(out)


async def amain(args: argparse.Namespace) -> int:
    capture = CaptureHandler(keep=True)
    upstream = await CaptureUpstream(capture).start()
    tmp = Path(tempfile.mkdtemp(prefix="relay-bench-http-", dir=args.workdir))
    children: list[Child] = []
    runs: list[Run] = []
    use_wrk = args.load == "wrk" or (args.load == "auto" and shutil.which("wrk") is not None)
    if args.load == "wrk" and shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)")
        return 1
    load = (f"wrk, {args.duration:g} s per endpoint and server" if use_wrk else
            f"aiohttp clients in this process, {args.requests} requests per endpoint"
            + ("" if args.load == "aiohttp" else " (wrk is not installed: apt-get install wrk)"))
    print(f"tracking_hits: {load}, {args.clients} keep-alive connections; "
          f"{args.rounds} round(s); {os.cpu_count()} CPUs; work dir {tmp} ({fs_of(tmp)}); "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}", flush=True)
    print(f"  {cpu_calibration()}", flush=True)
    steal = Steal()
    try:
        # relay, and a tracked message through it to get real tokens
        smtp_port, http_port, admin_port = free_port(), free_port(), free_port()
        # The admin listener's /metrics counts the hits relay answered (loopback: no token).
        relay = relay_child(tmp, relay_config(workdir=tmp, smtp_port=smtp_port, http_port=http_port,
                                              upstream_port=upstream.port)
                            + f'\n[admin]\nlisten = "{HOST}:{admin_port}"\n', smtp_port, http_port)
        children.append(relay)
        await relay.start()
        rcpts = [f"reader{i}@example.org" for i in range(args.recipients)]
        async with aiosmtplib.SMTP(hostname=HOST, port=smtp_port, timeout=30) as smtp:
            await smtp.sendmail(SENDER, rcpts, build_message(5120, "tracked", to=rcpts[0]))
        if not await wait_until(lambda: capture.count >= len(rcpts), 30):
            print(f"relay delivered only {capture.count}/{len(rcpts)} copies; see {relay.log}")
            return 1
        opens, clicks = tracking_urls(capture.messages)
        print(f"  tokens: {len(opens)} pixel URLs, {len(clicks)} click URLs from {len(rcpts)} delivered copies "
              f"(click URL length {len(clicks[0]) if clicks else 0})", flush=True)
        if not opens or not clicks:
            return 1
        db = tmp / "relay.db"
        await asyncio.sleep(0.5)  # let the Send/Delivery events settle

        # baseline: a static aiohttp app on its own port, same paths and tokens
        base_port = free_port()
        baseline = Child("static http", [sys.executable, str(BENCH / "_baselines.py"), "http", str(base_port)],
                         cwd=tmp, log=tmp / "baseline.log", ports=[base_port])
        children.append(baseline)
        await baseline.start()
        relay_port = f":{http_port}/"
        if args.smtp_probe:  # the same probe against an idle relay, for comparison
            stop_idle = asyncio.Event()
            idle_task = asyncio.create_task(smtp_probe(smtp_port, stop_idle, args.time_limit))
            await asyncio.sleep(1.0)
            stop_idle.set()
            lat = sorted(await idle_task)
            print(f"  SMTP probe, relay idle: {len(lat)} submits, 250 after p50 {ms(percentile(lat, 50))}, "
                  f"max {ms(lat[-1] if lat else float('nan'))}", flush=True)
        for rnd in range(1, args.rounds + 1):
            servers = [("baseline", baseline), ("relay", relay)]
            if rnd % 2 == 0:  # alternate which server goes first (drift)
                servers.reverse()
            for kind, urls, expect in (("open", opens, 200), ("click", clicks, 302)):
                for name, child in servers:
                    target = urls if name == "relay" else [u.replace(relay_port, f":{base_port}/") for u in urls]
                    before = count_events(db, EVENT_OF[kind]) if name == "relay" else 0
                    served0 = served_hits(admin_port)[kind] if name == "relay" else 0.0
                    stop_probe = asyncio.Event()
                    probe = (asyncio.create_task(smtp_probe(smtp_port, stop_probe, args.time_limit))
                             if args.smtp_probe and name == "relay" else None)
                    try:
                        if use_wrk:
                            r = await wrk_hammer(target, seconds=args.duration, clients=args.clients, server=child,
                                                 script=tmp / "wrk.lua")
                        else:
                            r = await hammer(target, n=args.requests, clients=args.clients, expect=expect,
                                             time_limit=args.time_limit, server=child)
                    except BaseException:
                        if probe is not None:
                            probe.cancel()
                        raise
                    r.server, r.kind, r.round = name, kind, rnd
                    stop_probe.set()
                    if name == "relay":
                        # every hit relay answered is recorded (no de-duplication), the warm-up's included
                        served = int(served_hits(admin_port)[kind] - served0)
                        got, r.flush, r.backlog = await wait_events(db, EVENT_OF[kind], before + served,
                                                                    r.last_at, args.flush_limit)
                        r.events, r.served = got - before, served
                        # The events still queued at the last answer are stored on CPU the
                        # phase did not count: this counts it (per measured hit; it includes
                        # storing any warm-up hits still queued when the measured ones began).
                        r.cpu_stored = child.cpu() - r.cpu0
                    if probe is not None:
                        lat = sorted(await probe)
                        print(f"  SMTP probe during relay {kind} #{rnd}: {len(lat)} submits, 250 after p50 "
                              f"{ms(percentile(lat, 50))}, max {ms(lat[-1] if lat else float('nan'))}", flush=True)
                    runs.append(r)
                    print(f"  {name} {kind} #{rnd}: {r.ok} ok, {r.errors} errors in {r.seconds:.2f}s; server CPU "
                          f"{r.server_cpu:.2f}s ({r.server_main_cpu:.2f}s main thread, {r.server_other_cpu:.2f}s other)"
                          + (f"; {r.events} {EVENT_OF[kind]} events of {r.served} hits answered, {r.backlog} not yet stored at the last "
                             f"hit, complete {ms(r.flush)} after it; server CPU until stored "
                             f"{1e6 * r.cpu_stored / max(1, r.ok):.0f} us/hit" if r.events is not None else ""),
                          flush=True)
    finally:
        codes = [(c.name, await c.stop()) for c in children]
        await upstream.stop()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    bad = [f"{n} exited {c}" for n, c in codes if c not in (0, None)]
    print(f"  hypervisor steal during the run: {steal.percent():.1f}% of CPU time; {cpu_calibration()}")
    print()
    print(table(runs, args.rounds))
    if bad:
        print("; ".join(bad))
    return 0 if not bad and all(r.errors == 0 for r in runs) else 1


def main() -> None:
    p = argparse.ArgumentParser(description="Tracking server hits/second: static aiohttp baseline vs relay serve")
    p.add_argument("--requests", type=int, default=5000,
                   help="requests per endpoint and server with aiohttp clients (default 5000)")
    p.add_argument("--load", choices=("auto", "wrk", "aiohttp"), default="auto",
                   help="load generator: wrk if installed (auto, the default), or aiohttp clients in this process")
    p.add_argument("--duration", type=float, default=5.0,
                   help="seconds per endpoint and server with wrk, after a 1 s warm-up (default 5)")
    p.add_argument("--clients", type=int, default=4,
                   help="concurrent keep-alive connections (aiohttp clients, or wrk -c) (default 4)")
    p.add_argument("--recipients", type=int, default=5,
                   help="recipients of the tracked message whose tokens are used (default 5)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the four phases (server order alternated) and add a median table (default 1)")
    p.add_argument("--time-limit", type=float, default=30.0, help="bound on each request phase, seconds (default 30)")
    p.add_argument("--flush-limit", type=float, default=30.0,
                   help="bound on waiting for the events to be stored, seconds (default 30)")
    p.add_argument("--smtp-probe", action="store_true",
                   help="while relay is being hit, also submit a message every 100 ms and report its 250 latency")
    p.add_argument("--workdir", default=None, help="where the temporary SQLite file goes (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (relay.db, logs)")
    args = p.parse_args()
    if min(args.requests, args.clients, args.recipients, args.rounds) < 1 or not 1 <= args.duration <= 600:
        p.error("--requests, --clients, --recipients and --rounds must be positive, --duration 1..600 s")
    sys.exit(asyncio.run(amain(args)))


if __name__ == "__main__":
    main()
