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
#
#   .venv/bin/python bench/tracking_hits.py [--requests N] [--clients C] [--rounds K] [--smtp-probe]
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
    server_cpu: float = float("nan")
    server_main_cpu: float = float("nan")  # the event-loop thread
    server_other_cpu: float = float("nan")  # all other threads (aiosqlite's among them)
    bench_cpu: float = float("nan")
    events: int | None = None  # rows in relay's events table for this kind, after the wait
    flush: float = float("nan")  # seconds from the last response to the last event row
    last_at: float = 0.0  # monotonic time of the last successful response
    backlog: int = 0  # events not yet in the table when the last response came
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
    return {"rate": r.rate, "p50": percentile(r.lat, 50), "p99": percentile(r.lat, 99),
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
            f"server CPU per hit {m['cpu_hit'] / b['cpu_hit']:.2f}x")


def table(runs: list[Run], rounds: int) -> str:
    label = lambda r: f"{r.server} {r.kind}" + (f" #{r.round}" if rounds > 1 else "")  # noqa: E731
    events = lambda r: "-" if r.events is None else f"{r.events}/{r.ok}"  # noqa: E731
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
              f"{sum(r.ok for r in runs if (r.server, r.kind) == k)}" for k in keys}
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
    print(f"tracking_hits: {args.requests} requests per endpoint, {args.clients} clients (keep-alive); "
          f"{args.rounds} round(s); {os.cpu_count()} CPUs; work dir {tmp} ({fs_of(tmp)}); "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}", flush=True)
    print(f"  {cpu_calibration()}", flush=True)
    steal = Steal()
    try:
        # relay, and a tracked message through it to get real tokens
        smtp_port, http_port = free_port(), free_port()
        relay = relay_child(tmp, relay_config(workdir=tmp, smtp_port=smtp_port, http_port=http_port,
                                              upstream_port=upstream.port), smtp_port, http_port)
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
                    stop_probe = asyncio.Event()
                    probe = (asyncio.create_task(smtp_probe(smtp_port, stop_probe, args.time_limit))
                             if args.smtp_probe and name == "relay" else None)
                    try:
                        r = await hammer(target, n=args.requests, clients=args.clients, expect=expect,
                                         time_limit=args.time_limit, server=child)
                    except BaseException:
                        if probe is not None:
                            probe.cancel()
                        raise
                    r.server, r.kind, r.round = name, kind, rnd
                    stop_probe.set()
                    if name == "relay":
                        # every hit is recorded (no de-duplication), the warm-up's 3 per client included
                        want = before + r.ok + 3 * args.clients
                        got, r.flush, r.backlog = await wait_events(db, EVENT_OF[kind], want, r.last_at,
                                                                    args.flush_limit)
                        r.events = got - before - 3 * args.clients
                    if probe is not None:
                        lat = sorted(await probe)
                        print(f"  SMTP probe during relay {kind} #{rnd}: {len(lat)} submits, 250 after p50 "
                              f"{ms(percentile(lat, 50))}, max {ms(lat[-1] if lat else float('nan'))}", flush=True)
                    runs.append(r)
                    print(f"  {name} {kind} #{rnd}: {r.ok} ok, {r.errors} errors in {r.seconds:.2f}s; server CPU "
                          f"{r.server_cpu:.2f}s ({r.server_main_cpu:.2f}s main thread, {r.server_other_cpu:.2f}s other)"
                          + (f"; {r.events} {EVENT_OF[kind]} events, {r.backlog} not yet stored at the last "
                             f"hit, complete {ms(r.flush)} after it" if r.events is not None else ""), flush=True)
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
    p.add_argument("--requests", type=int, default=5000, help="requests per endpoint and server (default 5000)")
    p.add_argument("--clients", type=int, default=4, help="concurrent aiohttp clients (default 4)")
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
    if min(args.requests, args.clients, args.recipients, args.rounds) < 1:
        p.error("--requests, --clients, --recipients and --rounds must be positive")
    sys.exit(asyncio.run(amain(args)))


if __name__ == "__main__":
    main()
