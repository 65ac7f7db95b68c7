# SMTP throughput end to end: C aiosmtplib clients submit N messages (one reused
# connection each) and a capture upstream in this process counts what arrives.
# Three servers in the middle, each in its own process, measured in the same run:
#   baseline         a bare aiosmtpd -> queue -> aiosmtplib forwarder (no spool, no events)
#   relay untracked  `relay serve`, configuration set with a sqlite destination (send, delivery)
#   relay tracked    `relay serve`, set whose destination matches open+click: every copy is
#                    instrumented (pixel + 10 signed redirect links) per recipient
# Figures: accept rate (250 replies/s seen by clients), delivered rate (arrivals at the
# upstream/s), submit latency p50/p99, submit->upstream latency p50/p99, and the CPU the
# server process used (main thread and other threads). Figures only: nothing here
# asserts on timing.
#
#   .venv/bin/python bench/smtp_throughput.py [--messages N] [--clients C] [--size BYTES] [--rounds K]
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    BENCH,
    HOST,
    LINKS,
    SENDER,
    CaptureHandler,
    CaptureUpstream,
    Child,
    PySpy,
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
    summarize_collapsed,
    wait_until,
    with_seq,
)

RCPT = "reader@example.org"
WARMUP_PER_CLIENT = 2


@dataclass
class Result:
    name: str
    scenario: str = ""
    round: int = 1
    sent: int = 0
    accepted: int = 0
    errors: int = 0
    first_error: str = ""
    delivered: int = 0
    accept_s: float = float("nan")
    deliver_s: float = float("nan")
    lat: list[float] = field(default_factory=list)
    e2e: list[float] = field(default_factory=list)
    server_cpu: float = float("nan")
    server_main_cpu: float = float("nan")  # the event-loop thread
    server_other_cpu: float = float("nan")  # every other thread (aiosqlite's among them)
    bench_cpu: float = float("nan")
    wall: float = float("nan")
    exit_code: int | None = None
    note: str = ""
    sample_info: str = ""

    @property
    def accept_rate(self) -> float:
        return self.accepted / self.accept_s if self.accept_s > 0 else float("nan")

    @property
    def deliver_rate(self) -> float:
        return self.delivered / self.deliver_s if self.deliver_s > 0 else float("nan")


async def drive(name: str, port: int, capture: CaptureHandler, template: bytes, *, n: int, clients: int,
                server: Child, time_limit: float, deliver_limit: float) -> Result:
    """Warm up, then submit n messages from `clients` connections; wait (bounded) for delivery."""
    res = Result(name)
    conns: list[aiosmtplib.SMTP] = []
    try:
        for _ in range(clients):
            c = aiosmtplib.SMTP(hostname=HOST, port=port, timeout=30, local_hostname="client.bench")
            await c.connect()
            conns.append(c)
        # Warm-up: connections to the upstream opened, code paths and caches warm.
        warm = [with_seq(template, 90_000_000 + i) for i in range(clients * WARMUP_PER_CLIENT)]
        for k in range(WARMUP_PER_CLIENT):
            await asyncio.gather(*(c.sendmail(SENDER, [RCPT], warm[i * WARMUP_PER_CLIENT + k])
                                   for i, c in enumerate(conns)))
        if not await wait_until(lambda: capture.count >= len(warm), 30):
            res.note = f"warm-up not delivered ({capture.count}/{len(warm)})"
            return res
        await asyncio.sleep(0.3)  # let the warm-up's Delivery events settle
        capture.reset()

        counter = iter(range(n))
        started: dict[int, float] = {}
        t0 = time.monotonic()
        deadline = t0 + time_limit
        cpu0, self0, (main0, other0) = server.cpu(), self_cpu(), server.thread_cpu()
        last_ok = t0

        async def client(c: aiosmtplib.SMTP) -> None:
            nonlocal last_ok
            for seq in counter:
                if time.monotonic() > deadline:
                    return
                data = with_seq(template, seq)
                t = started[seq] = time.monotonic()
                res.sent += 1
                try:
                    await c.sendmail(SENDER, [RCPT], data)
                except aiosmtplib.SMTPException as e:
                    res.errors += 1
                    res.first_error = res.first_error or f"{type(e).__name__}: {e}"
                    if not c.is_connected:
                        return
                    continue
                done = time.monotonic()
                res.lat.append(done - t)
                res.accepted += 1
                last_ok = max(last_ok, done)

        await asyncio.gather(*(client(c) for c in conns))
        res.accept_s = last_ok - t0
        await wait_until(lambda: capture.count >= res.accepted, deliver_limit)
        t_end = time.monotonic()
        res.server_cpu = server.cpu() - cpu0
        main1, other1 = server.thread_cpu()
        res.server_main_cpu, res.server_other_cpu = main1 - main0, other1 - other0
        res.bench_cpu = self_cpu() - self0
        res.delivered = capture.count
        res.deliver_s = (capture.last_at or t_end) - t0
        res.wall = t_end - t0
        if res.delivered < res.accepted:
            res.note = f"only {res.delivered}/{res.accepted} delivered within {deliver_limit:.0f}s"
        res.e2e = sorted(capture.arrivals[s] - started[s] for s in capture.arrivals if s in started)
        res.lat.sort()
        s = capture.sample
        if b"/c/" in s or b"/o/" in s:
            res.sample_info = f"a delivered copy has {s.count(b'/c/')} tracked links and {s.count(b'/o/')} pixel"
        return res
    finally:
        for c in conns:
            try:
                await asyncio.wait_for(c.quit(), 5)
            except Exception:  # noqa: BLE001 - closing anyway
                c.close()


COLUMNS = ["", "accept/s", "delivered/s", "submit p50", "submit p99", "e2e p50", "e2e p99",
           "srv CPU ms/msg", "srv CPU %", "bench CPU %"]


def metrics(r: Result) -> dict[str, float]:
    nan = float("nan")
    return {
        "accept": r.accept_rate, "deliver": r.deliver_rate,
        "p50": percentile(r.lat, 50), "p99": percentile(r.lat, 99),
        "e2e50": percentile(r.e2e, 50), "e2e99": percentile(r.e2e, 99),
        "cpu_msg": r.server_cpu / r.delivered if r.delivered else nan,
        "srv_pct": 100 * r.server_cpu / r.deliver_s if r.deliver_s > 0 else nan,
        "bench_pct": 100 * r.bench_cpu / r.deliver_s if r.deliver_s > 0 else nan,
    }


def _row(name: str, m: dict[str, float]) -> list[str]:
    pct = lambda v: "-" if v != v else f"{v:.0f}"  # noqa: E731
    return [name, rate(m["accept"]), rate(m["deliver"]), ms(m["p50"]), ms(m["p99"]), ms(m["e2e50"]),
            ms(m["e2e99"]), "-" if m["cpu_msg"] != m["cpu_msg"] else f"{1000 * m['cpu_msg']:.2f}",
            pct(m["srv_pct"]), pct(m["bench_pct"])]


def _ratios(name: str, m: dict[str, float], b: dict[str, float]) -> str:
    return (f"{name} / baseline: accept {m['accept'] / b['accept']:.2f}x, delivered {m['deliver'] / b['deliver']:.2f}x, "
            f"submit p50 {m['p50'] / b['p50']:.2f}x, server CPU per message {m['cpu_msg'] / b['cpu_msg']:.2f}x")


def table(results: list[Result], rounds: int) -> str:
    label = lambda r: f"{r.name} #{r.round}" if rounds > 1 else r.name  # noqa: E731
    out = grid(COLUMNS, [_row(label(r), metrics(r)) for r in results])
    out.append("")
    for r in results:  # each relay run against the baseline of its own round
        base = next((b for b in results if b.scenario == "baseline" and b.round == r.round), None)
        if base is not None and r is not base:
            out.append(_ratios(label(r), metrics(r), metrics(base)))
    if rounds > 1:
        names = list(dict.fromkeys(r.name for r in results))
        med = {n: {k: statistics.median(metrics(r)[k] for r in results if r.name == n)
                   for k in metrics(results[0])} for n in names}
        out += ["", f"median of {rounds} rounds:"] + grid(COLUMNS, [_row(n, med[n]) for n in names])
        if "baseline forwarder" in med:
            out += [_ratios(n, med[n], med["baseline forwarder"]) for n in names if n != "baseline forwarder"]
    for r in results:
        if r.errors or r.note or (r.exit_code not in (0, None)):
            out.append(f"{label(r)}: errors {r.errors} {r.first_error} {r.note} exit {r.exit_code}".rstrip())
    return "\n".join(out)


async def amain(args: argparse.Namespace) -> int:
    capture = CaptureHandler()
    upstream = await CaptureUpstream(capture).start()
    tmp = Path(tempfile.mkdtemp(prefix="relay-bench-smtp-", dir=args.workdir))
    results: list[Result] = []
    profiles: list[tuple[str, str]] = []
    children: list[Child] = []
    print(f"smtp_throughput: {args.messages} messages of {args.size} bytes (HTML, {LINKS} links, 1 recipient), "
          f"{args.clients} clients, {args.connections} upstream connections, {args.rounds} round(s); "
          f"{os.cpu_count()} CPUs; work dir {tmp} ({fs_of(tmp)}); {time.strftime('%Y-%m-%d %H:%M %Z')}", flush=True)
    print(f"  {cpu_calibration()}", flush=True)
    steal = Steal()
    try:
        scenarios = [s for s in ("baseline", "untracked", "tracked") if s in args.only]
        for rnd in range(1, args.rounds + 1):
            k = (rnd - 1) % len(scenarios)  # rotate the order from round to round (drift)
            for scenario in scenarios[k:] + scenarios[:k]:
                wd = tmp / f"{scenario}-{rnd}"
                wd.mkdir()
                smtp_port, http_port = free_port(), free_port()
                if scenario == "baseline":
                    child = Child("forwarder", [sys.executable, str(BENCH / "_baselines.py"), "forwarder",
                                                str(smtp_port), str(upstream.port), str(args.connections)],
                                  cwd=wd, log=wd / "forwarder.log", ports=[smtp_port])
                    name, template = "baseline forwarder", build_message(args.size, None)
                else:
                    child = relay_child(wd, relay_config(workdir=wd, smtp_port=smtp_port, http_port=http_port,
                                                         upstream_port=upstream.port, connections=args.connections),
                                        smtp_port, http_port)
                    name = f"relay {scenario}"
                    template = build_message(args.size, "plain" if scenario == "untracked" else "tracked")
                children.append(child)
                await child.start()
                spy = PySpy(child.pid, wd / "py-spy.txt", gil=args.profile == "gil") if args.profile else None
                capture.reset()
                r = await drive(name, smtp_port, capture, template, n=args.messages, clients=args.clients,
                                server=child, time_limit=args.time_limit, deliver_limit=args.time_limit)
                r.scenario, r.round = scenario, rnd
                r.exit_code = await child.stop()
                if spy is not None:
                    await spy.wait()
                    profiles.append((f"{name} #{rnd}", summarize_collapsed(spy.out)))
                results.append(r)
                print(f"  {name} #{rnd}: {r.accepted} accepted in {r.accept_s:.2f}s, {r.delivered} delivered in "
                      f"{r.deliver_s:.2f}s; server CPU {r.server_cpu:.2f}s ({r.server_main_cpu:.2f}s main thread, "
                      f"{r.server_other_cpu:.2f}s other threads); exit {r.exit_code}"
                      + "".join(f"; {x}" for x in (r.note, r.sample_info) if x), flush=True)
    finally:
        for child in children:
            await child.stop()
        await upstream.stop()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"  hypervisor steal during the run: {steal.percent():.1f}% of CPU time; {cpu_calibration()}")
    print()
    print(table(results, args.rounds))
    for name, summary in profiles:
        print(f"\npy-spy profile of {name} (whole process life):")
        print(summary)
    return 0 if all(r.delivered == r.accepted == args.messages and r.exit_code == 0 for r in results) else 1


def main() -> None:
    p = argparse.ArgumentParser(description="SMTP messages/second end to end: baseline forwarder vs relay serve")
    p.add_argument("--messages", type=int, default=2000, help="messages per scenario (default 2000)")
    p.add_argument("--clients", type=int, default=10, help="concurrent SMTP client connections (default 10)")
    p.add_argument("--size", type=int, default=5120, help="approximate message size in bytes (default 5120)")
    p.add_argument("--connections", type=int, default=4,
                   help="upstream connections: relay's upstream.connections and the forwarder's workers (default 4)")
    p.add_argument("--time-limit", type=float, default=40.0,
                   help="bound in seconds on submitting, and again on waiting for delivery, per scenario (default 40)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the scenarios (order rotated) and add a median table (default 1)")
    p.add_argument("--only", nargs="+", default=["baseline", "untracked", "tracked"],
                   choices=["baseline", "untracked", "tracked"], help="scenarios to run (default all three)")
    p.add_argument("--workdir", default=None, help="where the temporary SQLite files go (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (relay.db, logs)")
    p.add_argument("--profile", nargs="?", const="all", choices=["all", "gil"],
                   help="attach py-spy (pip install py-spy; needs ptrace) to each server and summarize; "
                        "'gil' samples only the thread holding the GIL")
    args = p.parse_args()
    if min(args.messages, args.clients, args.size, args.connections, args.rounds) < 1:
        p.error("--messages, --clients, --size, --connections and --rounds must be positive")
    if args.profile and not Path(sys.executable).with_name("py-spy").exists():
        p.error(f"--profile needs py-spy next to {sys.executable} (pip install py-spy)")
    sys.exit(asyncio.run(amain(args)))


if __name__ == "__main__":
    main()
