# Several serving processes over the one storage file ([server] processes > 1). The
# parent binds the listening sockets — one SO_REUSEPORT socket per process and port,
# so the kernel spreads connections over the processes and a taken port fails here,
# once — prepares the storage file, forks the workers and forwards SIGTERM/SIGINT.
# Each worker accepts mail, delivers what it accepted (retries included) and serves
# tracking hits; worker 0, the primary, also resumes what was pending before the start,
# publishes to webhook and file destinations, prunes and serves the admin listener.
# A worker that ends on its own ends the service (workers also die with the parent),
# so whatever supervises relay restarts it whole and the primary resumes everything.
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import resource
import signal
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass

from relay.config import Config, Listen
from relay.limits import SharedLimits
from relay.store import Store

log = logging.getLogger("relay")

STOP_GRACE = 45.0  # seconds the parent waits for workers after SIGTERM (each gives delivery 30 s)
_PR_SET_PDEATHSIG = 1


@dataclass
class Role:
    """What one serving process is: its index, its sockets, its end of the hand-off."""

    index: int
    count: int
    smtp_socket: socket.socket
    tracking_socket: socket.socket
    started_at: float  # the primary resumes what was pending before this; the rest is its owner's
    # A pipe every other worker holds open until it exits: the primary's end reads EOF once
    # they all have, so it publishes their last events (file destination, webhooks) last.
    others_pipe: tuple[int, int]
    # Per-client connection counts and AUTH failures, counted for all the processes.
    shared: SharedLimits | None = None

    @property
    def primary(self) -> bool:
        return self.index == 0

    async def others_stopped(self, timeout: float) -> bool:
        """In the primary: wait until every other worker has exited (or timeout)."""
        if self.count == 1:
            return True
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        fd = self.others_pipe[0]  # nobody writes to it: readable means EOF

        def readable() -> None:
            if not done.done():
                done.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await asyncio.wait_for(done, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(fd)


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (every connection is a descriptor)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:  # e.g. an unlimited hard limit the kernel caps lower
            log.warning("could not raise the open files limit from %d to %d: %s", soft, hard, e)
    return soft



def _probe(family: int, address: tuple[object, ...], wait: float) -> None:
    """Fail (EADDRINUSE) if anything listens on the address, SO_REUSEPORT sockets of another
    relay included, which would otherwise silently share the port with us. A predecessor
    just killed (its workers die with it) gets `wait` seconds to let go."""
    deadline = time.monotonic() + wait
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
        time.sleep(0.05)


def bind(listen: Listen, *, count: int, key: str = "listen", wait: float = 3.0) -> list[socket.socket]:
    """`count` listening sockets on one address and port (SO_REUSEPORT when count > 1).
    A failure names the configuration key and the address, in one line."""
    try:
        return _bind(listen, count=count, wait=wait)
    except OSError as e:
        raise OSError(e.errno, f"{key} {listen}: {e.strerror or e}") from None


def _bind(listen: Listen, *, count: int, wait: float) -> list[socket.socket]:
    infos = socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    if count > 1 and address[1] != 0:
        _probe(family, address, wait)
    out: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(family, socket.SOCK_STREAM)
            out.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if count > 1:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(address)
            if address[1] == 0:  # port 0: the others join the port the first one got
                address = (address[0], s.getsockname()[1], *address[2:])
            s.listen(1024)
            s.setblocking(False)
    except BaseException:
        for s in out:
            s.close()
        raise
    return out


def run(config: Config) -> int:
    """Serve with config.server.processes processes; returns the exit status."""
    count = config.server.processes
    # Counters of every process in one /metrics (prometheus-client's multiprocess mode:
    # each process writes its values to files here; the primary sums them at a scrape).
    metrics_dir = tempfile.mkdtemp(prefix="relay-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    raise_open_files_limit()  # inherited by every worker
    Store(config.storage.path).prepare()
    smtp = bind(config.smtp.listen, count=count, key="smtp.listen")
    try:
        tracking = bind(config.tracking.listen, count=count, key="tracking.listen")
    except BaseException:
        for s in smtp:
            s.close()
        raise
    started_at = time.time()
    others_pipe = os.pipe()
    try:
        shared: SharedLimits | None = SharedLimits()  # before fork: every worker maps the same counters
    except OSError as e:  # no POSIX semaphores (a sandbox without /dev/shm): count per process
        log.warning("per-client limits are counted per process: cannot share counters: %s", e)
        shared = None
    pids: dict[int, int] = {}
    stopping = _install_forwarding(pids)
    for index in range(count):
        pid = os.fork()
        if pid == 0:
            role = Role(index, count, smtp[index], tracking[index], started_at, others_pipe, shared)
            _worker(config, role, [*smtp, *tracking])
        pids[pid] = index
    for s in [*smtp, *tracking]:
        s.close()
    for fd in others_pipe:
        os.close(fd)
    status = _supervise(pids, stopping, metrics_dir)
    # Every worker is gone: a late SIGTERM must not kill the exiting parent (the
    # interpreter restores the default handlers as it finalizes) and turn 0 into -15.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    return status


def _worker(config: Config, role: Role, inherited: list[socket.socket]) -> None:
    """In the child: serve until told to stop; never returns."""
    code = 1
    try:
        # SIGTERM waits until the worker can shut down gracefully (relay.app.serve
        # unblocks it once its handlers are in place), even if it comes during start-up.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        # Die with the parent (kill -9 of `relay serve` stops everything at once).
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        for s in inherited:
            if s not in (role.smtp_socket, role.tracking_socket):
                s.close()
        # The primary keeps the read end; the others keep the write end until they exit.
        os.close(role.others_pipe[1] if role.primary else role.others_pipe[0])
        from relay.app import serve

        asyncio.run(serve(config, role=role))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except KeyboardInterrupt:
        code = 0
    except BaseException as e:  # noqa: BLE001 - one clear line, then the parent stops the rest
        if isinstance(e, OSError):
            print(f"relay: worker {role.index} cannot serve: {e}", file=sys.stderr, flush=True)
        else:
            traceback.print_exc()
    finally:
        logging.shutdown()
        os._exit(code)


@dataclass
class _Stopping:
    requested: bool = False


def _install_forwarding(pids: dict[int, int]) -> _Stopping:
    """SIGTERM/SIGINT to the parent: forwarded to every worker (installed before forking,
    so a signal during start-up is not lost; workers replace it with their own)."""
    stopping = _Stopping()

    def forward(signum: int, frame: object) -> None:
        stopping.requested = True
        for pid in list(pids):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return stopping


def _supervise(pids: dict[int, int], stopping: _Stopping, metrics_dir: str) -> int:
    status = 0
    deadline: float | None = None
    try:
        while pids:
            if stopping.requested and deadline is None:
                deadline = time.monotonic() + STOP_GRACE
                for pid in pids:  # again: one forked while the signal came may have missed it
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
            if deadline is not None and time.monotonic() > deadline:
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                deadline = float("inf")
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                time.sleep(0.05)
                continue
            index = pids.pop(pid)
            code = os.waitstatus_to_exitcode(wait_status)
            if code != 0:
                status = status or 1
            if not stopping.requested:
                # A worker ended on its own (a crash, or it could not start): stop the
                # others and exit, so whatever supervises relay restarts it whole.
                log.error("worker %d ended unexpectedly (exit %s): stopping", index, code)
                status = 1
                os.kill(os.getpid(), signal.SIGTERM)  # through forward(): stop the others
    finally:
        for name in os.listdir(metrics_dir):
            os.unlink(os.path.join(metrics_dir, name))
        os.rmdir(metrics_dir)
    return status
