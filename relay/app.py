# The composition root: builds every part from the Config, starts them in
# dependency order and stops them in reverse (an AsyncExitStack), so SIGTERM
# stops intake first and closes the store last with nothing lost.
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

from relay import retention
from relay.admin import AdminServer
from relay.config import Config
from relay.config import warnings as config_warnings
from relay.delivery import Deliverer, Schedule
from relay.events.bus import Destination, EventBus
from relay.events.file import FileDestination
from relay.events.sqlite import SqliteDestination
from relay.events.subscriptions import SubscriptionConfirmations
from relay.events.webhook import WebhookDestination
from relay.feedback.listener import FeedbackHandler, FeedbackListener
from relay.limits import LogThrottle
from relay.metrics import Metrics
from relay.return_path import ReturnPaths
from relay.smtp import IntakeHandler, SmtpServer
from relay.spool import Spool
from relay.store import Store, new_secret
from relay.supervisor import Role, raise_open_files_limit
from relay.tokens import Signer
from relay.tracking import TrackingServer
from relay.upstream import make_upstream

log = logging.getLogger("relay")

OTHERS_GRACE = 40.0  # s the primary waits for the other workers at shutdown (supervisor: 45)


class App:
    def __init__(self, config: Config, role: Role | None = None) -> None:
        self.config = config
        self.role = role  # None: the only process; else one of several (relay.supervisor)
        self.primary = role is None or role.primary
        self.store = Store(config.storage.path)
        self.smtp: SmtpServer | None = None
        self.tracking: TrackingServer | None = None
        self.admin: AdminServer | None = None
        self.metrics = Metrics()  # this process's counters, read by the admin /metrics
        self._stack = contextlib.AsyncExitStack()

    async def start(self) -> None:
        config = self.config
        stack = self._stack
        await self.store.open()
        stack.push_async_callback(self.store.close)

        # The configured secrets sign (the first) and verify; the generated one, once it
        # exists, always verifies too: configuring secrets later must not turn every
        # link already mailed into a 404.
        secrets = list(config.tracking.secrets)
        if secrets:
            generated = await self.store.get_setting("token_secret")
            secrets += [generated] if generated is not None else []
        else:
            secrets = [await self.store.setting("token_secret", new_secret)]
        keys = [s.encode() for s in secrets]
        self.signer = Signer(keys)

        destinations: dict[tuple[str, str], Destination] = {}
        confirming: dict[str, str] = {}  # sns destinations with confirm_subscription: their topic
        for cset in config.configuration_sets.values():
            for d in cset.event_destinations:
                name = f"{cset.name}/{d.name}"
                dest: Destination
                if d.type == "sqlite":
                    dest = SqliteDestination(name)
                elif d.type == "file":
                    assert d.path is not None
                    dest = FileDestination(name, d.path, self.store)
                else:
                    assert d.url is not None
                    dest = WebhookDestination(
                        name, d.url, d.secret, self.store, format=d.format, topic_arn=d.topic_arn,
                        mail_destination=d.mail_destination, max_retry_seconds=config.webhook.max_retry_seconds,
                        window=config.webhook.window, base_url=config.tracking.base_url,
                        confirm_key=keys[0] if d.confirm_subscription else None)
                    if d.confirm_subscription:
                        confirming[name] = dest.topic_arn
                if self.primary:  # the others only write its outbox rows
                    await dest.start()
                    stack.push_async_callback(dest.close)
                destinations[(cset.name, d.name)] = dest
        if self.role is not None and self.primary:
            # Runs after this process's bus has flushed and before the destinations close:
            # the others' last events (hits recorded as SIGTERM came) are published too.
            stack.push_async_callback(self._others_stopped)
        self.bus = EventBus(config.configuration_sets, destinations, self.store)
        await self.bus.start()
        stack.push_async_callback(self.bus.close)  # before the destinations close: they publish its rows

        self.spool = Spool(self.store)
        self.schedule = Schedule()
        upstream = make_upstream(config.upstream, local_hostname=config.smtp.hostname)
        stack.push_async_callback(upstream.close)
        # Every process delivers what it accepted itself (no hand-off, no second read of
        # the message); what was pending before the service started is resumed once, by
        # the primary.
        # VERP return paths are signed with the tracking secrets (a namespace of their own).
        self.return_paths = ReturnPaths(keys)
        self.deliverer = Deliverer(config=config, spool=self.spool, upstream=upstream, bus=self.bus,
                                   signer=self.signer, schedule=self.schedule, metrics=self.metrics,
                                   return_paths=self.return_paths)
        if self.primary:
            before = self.role.started_at if self.role is not None else None
            for job in await self.spool.pending(accepted_before=before):  # resume at once after a restart
                job.due = 0.0
                self.schedule.add(job)
        # Two workers per connection: a worker waiting for its outcome's commit (an fsync)
        # would otherwise leave its connection idle; the pool still bounds the connections.
        # Measured: 5 KB untracked mail delivered 447 -> 490/s, one process, same run.
        self.deliverer.start(2 * config.upstream.connections)
        stack.push_async_callback(self.deliverer.stop)
        if self.role is not None and self.primary:
            wake = asyncio.create_task(self._wake_destinations_forever(), name="wake-destinations")
            stack.push_async_callback(_cancel, wake)

        self.tracking = TrackingServer(config=config, signer=self.signer, spool=self.spool, bus=self.bus,
                                       store=self.store, metrics=self.metrics,
                                       shared_clients=self.role.shared.tracking_clients
                                       if self.role is not None and self.role.shared is not None else None)
        # SubscribeURL of confirm_subscription destinations: public, like SNS's own.
        SubscriptionConfirmations(store=self.store, key=keys[0],
                                  topics=confirming).register(self.tracking.app)
        await self.tracking.start(sock=self.role.tracking_socket if self.role else None)
        stack.push_async_callback(self.tracking.stop)

        if config.admin is not None and self.primary:
            self.admin = AdminServer(config=config, store=self.store, signer=self.signer, metrics=self.metrics)
            await self.admin.start()
            stack.push_async_callback(self.admin.stop)

        if config.feedback.listen is not None and self.primary:  # bounces are few: one process takes them
            feedback = FeedbackListener(config, FeedbackHandler(
                config=config, spool=self.spool, bus=self.bus, return_paths=self.return_paths, metrics=self.metrics))
            await feedback.start()
            stack.push_async_callback(feedback.stop)

        if self.primary:
            prune = asyncio.create_task(self._prune_forever(), name="prune")
            stack.push_async_callback(_cancel, prune)

        handler = IntakeHandler(config=config, spool=self.spool, schedule=self.schedule, bus=self.bus,
                                metrics=self.metrics)
        self.smtp = SmtpServer(config, handler, shared=self.role.shared if self.role is not None else None)
        await self.smtp.start(sock=self.role.smtp_socket if self.role else None)
        stack.push_async_callback(self.smtp.stop)
        log.info("SMTP on %s, upstream %s, storage %s", config.smtp.listen,
                 config.upstream.safe_url, config.storage.path)
        for warning in config_warnings(config):
            log.warning("%s", warning)

    async def stop(self) -> None:
        await self._stack.aclose()

    async def _others_stopped(self) -> None:
        assert self.role is not None
        if not await self.role.others_stopped(timeout=OTHERS_GRACE):
            log.warning("other workers still running after %.0f s; their last events are "
                        "published at the next start", OTHERS_GRACE)
        self.bus.committed()  # their outbox rows: the destinations drain them as they close

    async def _wake_destinations_forever(self, every: float = 0.25) -> None:
        """Primary of several processes: the others' commits carry outbox rows too, which
        their own wake-up cannot reach; the destinations here look on this beat."""
        while True:
            await asyncio.sleep(every)
            self.bus.committed()

    async def _prune_forever(self) -> None:
        """Apply the retention settings (relay.retention), hourly or sooner for short windows."""
        shortest = min(self.config.tracking.window_days, self.config.storage.retention_days,
                       self.config.storage.body_retention_days or self.config.tracking.window_days) * 86400.0
        while True:
            try:
                await retention.prune(self.store, self.config, now=time.time())
            except Exception:  # noqa: BLE001 - pruning is housekeeping; serving goes on
                log.exception("pruning the storage file failed")
            await asyncio.sleep(min(3600.0, max(1.0, shortest / 10)))


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


ACCEPT_FAILED = "socket.accept() out of system resource"  # asyncio's message, Python 3.11-3.13
RETRY_AFTER_CLOSE = "Exception in callback BaseSelectorEventLoop._start_serving("


def exception_handler(throttle: LogThrottle) -> Any:
    """A loop exception handler that logs accept() failures once per interval, not per attempt.

    Out of descriptors, asyncio retries accept() up to the backlog times per wake-up
    and logs a traceback for each (hundreds of thousands of lines a minute); one line
    per listener per interval says the same. Everything else goes to the default handler.
    """
    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if message.startswith(RETRY_AFTER_CLOSE) and isinstance(context.get("exception"), (OSError, ValueError)):
            # A retry asyncio scheduled after such a failure, run once the listener was closed.
            log.debug("accept retry after the listener closed: %s", context.get("exception"))
            return
        if message != ACCEPT_FAILED:
            loop.default_exception_handler(context)
            return
        sock = context.get("socket")
        try:
            where = "%s:%s" % sock.getsockname()[:2] if sock is not None else "?"
        except OSError:
            where = "?"
        key = f"accept:{where}"
        swallowed = throttle.suppressed(key)
        if throttle.should_log(key):
            log.error("cannot accept connections on %s: %s (out of file descriptors or memory; "
                      "%d more such failures since the last line; retrying)",
                      where, context.get("exception"), swallowed)
    return handle


async def serve(config: Config, role: Role | None = None) -> None:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(exception_handler(LogThrottle(60.0)))
    limit = raise_open_files_limit()
    if role is None or role.primary:
        log.info("open files limit %d", limit)
    app = App(config, role)
    try:
        await app.start()
    except BaseException:
        await app.stop()  # undo what did start (e.g. the tracking port was taken)
        raise
    primary = role is None or role.primary
    if primary:  # one line for the whole service, however many processes serve
        admin = f"; admin on http://{config.admin.listen}/" if config.admin is not None else ""
        admin += f"; feedback on {config.feedback.listen}" if config.feedback.listen is not None else ""
        processes = f"; {role.count} processes" if role is not None else ""
        print(f"relay: SMTP listening on {config.smtp.listen}; tracking on {config.tracking.listen}{admin}; "
              f"upstream {config.upstream.safe_url}{processes}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # A worker of several blocked them until now (relay.supervisor): a pending one arrives here.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await app.stop()
        # From here a second SIGTERM (the supervisor repeats it, a user presses Ctrl-C
        # twice) must not kill the exiting process: asyncio restores the default handler
        # as the loop closes, and a death by signal would turn exit 0 into a failure.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        if primary:
            print("relay: stopped", flush=True)
