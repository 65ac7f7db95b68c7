# Delivery workers: take due jobs from the schedule, instrument per recipient
# when the configuration set tracks opens or clicks, hand them to the upstream,
# then record each recipient's outcome and publish Delivery/Bounce/DeliveryDelay.
from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import quote

from relay import dkim as dkim_mod
from relay import dsn as dsn_mod
from relay import suppression, unsubscribe
from relay.config import Config
from relay.errors import ConfigError
from relay.events import records
from relay.events.bus import EventBus
from relay.headers import add_header, split_header_block
from relay.instrument import TrackingOptions, personalize, prepare
from relay.intake import SES_CONTROL_HEADERS, new_message_id
from relay.metrics import Metrics
from relay.outcomes import INTERNAL_ERROR, Reply, judge
from relay.retry import RetryPolicy
from relay.return_path import ReturnPathClaim, ReturnPaths
from relay.spool import Job, Spool, put_statements, result_statements
from relay.store import Statement
from relay.store import suppression as suppression_store
from relay.store.counting import NOTICE_TAG
from relay.tokens import Signer, UnsubscribeClaim
from relay.upstream import Upstream

log = logging.getLogger("relay.delivery")
# Bounce subtypes of relay's own refusals: not a new bounce from the recipient's side.
REFUSALS = frozenset({"OnAccountSuppressionList", "UnsubscribedRecipient"})
_URL_SAFE = "-._~:/?#[]@!$&'()*+,;=%"  # RFC 3986 reserved and unreserved, kept as they are


class Schedule:
    """Jobs ordered by due time; workers wait for the earliest one to come due.

    A waiting job keeps its body in memory (so a fresh message is sent without reading
    it back) only while all waiting bodies together stay under `max_held_bytes`; beyond
    that the body is dropped and reloaded from the spool when due, so a backlog (a slow
    or unreachable upstream) costs disk, not RAM.
    """

    def __init__(self, clock: Callable[[], float] = time.time, *,
                 max_held_bytes: int = 64 * 1024 * 1024) -> None:
        self._heap: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self._changed = asyncio.Event()
        self._clock = clock
        self._max_held = max_held_bytes
        self.held_bytes = 0
        self.closed = False
    def add(self, job: Job) -> None:
        if job.data is not None:
            if self.held_bytes + len(job.data) > self._max_held:
                job.data = None  # it is in the spool
                job.prepared = None
            else:
                self.held_bytes += len(job.data)
        heapq.heappush(self._heap, (job.due, next(self._seq), job))
        self._changed.set()

    async def take(self) -> Job | None:
        """The next due job, or None once closed."""
        while not self.closed:
            now = self._clock()
            if self._heap and self._heap[0][0] <= now:
                job = heapq.heappop(self._heap)[2]
                if job.data is not None:
                    self.held_bytes -= len(job.data)
                return job
            wait = self._heap[0][0] - now if self._heap else None
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait)
        return None

    def close(self) -> None:
        self.closed = True
        self._changed.set()


class Deliverer:
    def __init__(self, *, config: Config, spool: Spool, upstream: Upstream, bus: EventBus,
                 signer: Signer, schedule: Schedule, metrics: Metrics | None = None,
                 return_paths: ReturnPaths | None = None) -> None:
        self._config = config
        self._return_paths = return_paths
        self._metrics = metrics or Metrics()
        self._spool = spool
        self._upstream = upstream
        self._bus = bus
        self._signer = signer
        self._schedule = schedule
        self._policy = RetryPolicy(
            first_delay=config.upstream.retry_first_delay,
            max_delay=config.upstream.retry_max_delay,
            max_delivery_seconds=config.upstream.max_delivery_seconds,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._dkim_signer = _dkim_signer(config)
        self._dkim_warned: set[str] = set()  # From: domains warned about (once per process)

    def start(self, workers: int) -> None:
        for i in range(workers):
            self._tasks.append(asyncio.create_task(self._work(), name=f"delivery-{i}"))

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; let attempts under way finish (they are recorded), then return."""
        self._schedule.close()
        if self._tasks:
            done, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for t in pending:  # still pending in the spool: resumed after restart
                t.cancel()
            for t in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        self._tasks.clear()

    async def _work(self) -> None:
        while True:
            job = await self._schedule.take()
            if job is None:
                return
            try:
                await self.attempt(job)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a bug must not kill the worker or lose the job
                # attempt() records every copy's outcome itself; reaching here means even
                # that failed. Replies not yet recorded stay on the job (job.replies), so
                # the retry records them instead of sending those copies again.
                log.exception("delivery of %s failed unexpectedly; retrying later", job.message_id)
                job.due = time.time() + self._policy.first_delay
                self._schedule.add(job)

    async def attempt(self, job: Job) -> None:
        if job.data is None:  # a DSN quotes the headers, so recording needs it too
            job.data = await self._spool.load_data(job.message_id)
            if job.data is None:
                log.error("message %s has pending recipients but no data; dropping them", job.message_id)
                return
        if job.replies is None:
            recipients = list(job.attempts)
            started = time.perf_counter()
            try:
                job.replies = await self._send(job, recipients)
                self._metrics.delivery_attempt_seconds.observe(time.perf_counter() - started)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - whatever broke, these copies were not sent
                log.exception("delivery of %s: unexpected error before sending", job.message_id)
                job.replies = {r: _internal_error(e) for r in recipients}
        try:
            await self._record(job, job.replies)
        except Exception:
            # Not recorded (say, the disk is full): keep the replies and record them on the
            # next try, never send again the copies the upstream already accepted.
            job.due = time.time() + self._policy.first_delay
            self._schedule.add(job)
            log.exception("outcome of %s not recorded; retrying", job.message_id)
            return
        job.replies = None

    async def _send(self, job: Job, recipients: list[str]) -> dict[str, Reply]:
        assert job.data is not None
        refused = await self._refused(job, recipients)
        recipients = [r for r in recipients if r not in refused]
        if not recipients:
            return refused
        cset = self._config.configuration_sets.get(job.configuration_set or "")
        tracked = job.tracked and cset is not None
        if tracked and job.prepared is None:
            assert cset is not None
            options = TrackingOptions(open=cset.tracks_opens, click=cset.tracks_clicks)
            if len(job.data) > 64 * 1024:
                # ~20 ms for a 100 KB newsletter: off the event loop, so hits and intake
                # are not held up behind it.
                job.prepared = await asyncio.to_thread(prepare, job.data, options)
            else:
                job.prepared = prepare(job.data, options)
            for note in job.prepared.notes:  # e.g. a link too long to track: left as it is
                log.info("message %s: %s", job.message_id, note)
        prepared = job.prepared if tracked else None
        if prepared is not None and prepared.failure is not None:
            if not job.rendering_reported:
                job.pending_events.append((records.rendering_failure_event(
                    job.mail, error_message=prepared.failure), None))
            prepared = None  # sent as accepted
        if prepared is None and not self._per_recipient(job):
            # Byte-for-byte as accepted (but for what _copy adds), one transaction for all.
            sender, data = self._copy(job, None, job.data, changed=False)
            return {**refused, **await self._upstream.send(sender, recipients, data)}
        assert cset is not None or prepared is None
        base_url = self._config.tracking_base_url(job.configuration_set)
        # One transaction per recipient, each with its own tokens (per-recipient attribution).
        slots = asyncio.Semaphore(self._config.upstream.connections)

        async def send_one(rcpt: str) -> Reply:
            async with slots:  # a copy is built only when it can soon be sent
                try:
                    assert job.data is not None
                    data = job.data
                    if prepared is not None:
                        assert cset is not None
                        data = personalize(prepared, signer=self._signer, base_url=base_url,
                                           https_policy=cset.https_policy, message_id=job.message_id,
                                           recipient_index=job.mail.destination.index(rcpt),
                                           sent_at=job.accepted_at)
                    sender, data = self._copy(job, rcpt, data, changed=prepared is not None)
                    return (await self._upstream.send(sender, [rcpt], data))[rcpt]
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - one copy's failure is that copy's outcome
                    log.exception("delivery of %s to one recipient failed unexpectedly", job.message_id)
                    return _internal_error(e)

        first = await send_one(recipients[0])
        if first.code == 0 and not _is_internal_error(first):
            # The upstream is unreachable: the others would only wait for the same
            # timeout. They are deferred with the same reason. A failure inside relay
            # is that copy's own (#7): the others are still sent.
            return {**refused, **{r: first for r in recipients}}
        # The rest in parallel, over the pooled connections.
        rest = await asyncio.gather(*(send_one(r) for r in recipients[1:]))
        return {**refused, **dict(zip(recipients, [first, *rest], strict=True))}

    # What happens to each copy beyond tracking (#10: deliverability). Each step is a
    # pure function of the copy; the order matters: DKIM signs last, over the final bytes.

    async def _refused(self, job: Job, recipients: list[str]) -> dict[str, Reply]:
        """Recipients relay will not send to (suppression list, unsubscribed): their outcome."""
        if not recipients or NOTICE_TAG in job.mail.tags:
            return {}  # relay's own DSNs go to the sender whatever the list says
        store = self._spool.store
        out: dict[str, Reply] = {}
        reasons = self._config.suppressed_reasons(job.configuration_set)
        if reasons:  # SES SuppressionOptions: a set may suppress fewer reasons, or none
            found = await suppression_store.suppressed(store, recipients)
            for rcpt in recipients:
                entry = found.get(suppression.normalize(rcpt))
                if entry is not None and suppression.applies(entry, reasons):
                    out[rcpt] = suppression.suppressed_reply(rcpt, entry)
        lists = self._list_options(job)
        if lists is not None:
            rest = [r for r in recipients if r not in out]
            gone = await suppression_store.unsubscribed(store, lists.contact_list, lists.topic, rest)
            for rcpt in rest:
                if suppression.normalize(rcpt) in gone:
                    out[rcpt] = suppression.unsubscribed_reply(rcpt, lists.describe())
        return out

    def _per_recipient(self, job: Job) -> bool:
        """Whether an untracked message still needs one copy per recipient (a VERP return
        path or an unsubscribe link is per recipient)."""
        return self._verp_domain(job) is not None or self._list_options(job) is not None

    def _list_options(self, job: Job) -> unsubscribe.ListManagement | None:
        """The message's X-SES-LIST-MANAGEMENT-OPTIONS, else its set's list_unsubscribe
        (then the contact list is the set's name, no topic)."""
        if job.list_management is not None:
            return job.list_management
        cset = self._config.configuration_sets.get(job.configuration_set or "")
        return unsubscribe.ListManagement(cset.name) if cset is not None and cset.list_unsubscribe else None

    def _copy(self, job: Job, rcpt: str | None, data: bytes, *, changed: bool) -> tuple[str, bytes]:
        """The envelope sender and the final bytes of one copy (rcpt None: the one copy for
        every recipient). `changed`: relay rewrote the body (tracking)."""
        sender = self._return_path(job, rcpt)
        data = self._list_management(job, rcpt, data)
        data = self._feedback_id(job, data)
        return sender, self._dkim(job, data, changed=changed)

    def _verp_domain(self, job: Job) -> str | None:
        """The return path domain of this message's copies, if any. Never for the null
        sender: a bounce must not bounce (RFC 5321 §4.5.5), and relay's DSNs use it."""
        if not job.mail_from or self._return_paths is None:
            return None
        return self._config.return_path_domain(job.configuration_set)

    def _return_path(self, job: Job, rcpt: str | None) -> str:
        """The envelope sender: the original, or a VERP address under [feedback]."""
        domain = self._verp_domain(job)
        if domain is None or rcpt is None:
            return job.mail_from
        assert self._return_paths is not None
        claim = ReturnPathClaim(job.message_id, job.mail.destination.index(rcpt))
        return self._return_paths.address(claim, domain) or job.mail_from

    def _list_management(self, job: Job, rcpt: str | None, data: bytes) -> bytes:
        """List-Unsubscribe headers and the {{amazonSESUnsubscribeUrl}} placeholder."""
        lists = self._list_options(job)
        if lists is None or rcpt is None or rcpt not in job.mail.destination:
            return data
        base_url = self._config.tracking_base_url(job.configuration_set)
        token = self._signer.sign_unsubscribe(UnsubscribeClaim(
            message_id=job.message_id, recipient_index=job.mail.destination.index(rcpt), sent_at=job.accepted_at,
            contact_list=lists.contact_list, topic=lists.topic))
        # ASCII whatever base_url holds: a header field value is ASCII (RFC 5322 §2.2).
        return unsubscribe.apply(data, quote(f"{base_url}/u/{token}", safe=_URL_SAFE))

    def _feedback_id(self, job: Job, data: bytes) -> bytes:
        """The Feedback-ID: header providers group their reports by (Gmail's format,
        CampaignID:CustomerID:MailTypeID:SenderID): the configuration set, "relay", and
        relay's host name. Only with a return path domain (the feedback loop is set up);
        one the mailer already wrote is kept."""
        if self._verp_domain(job) is None:
            return data
        value = f"{job.configuration_set or 'none'}:relay:{self._config.smtp.hostname}"
        return add_header(data, "Feedback-ID", value, unless_present=True)

    def _dkim(self, job: Job, data: bytes, *, changed: bool) -> bytes:
        """Sign for the From: domain with [dkim.<domain>]; drop signatures the rewrite broke."""
        try:
            sealed = self._dkim_signer.seal(data, original=job.data if job.data is not None else data,
                                            changed=changed)
        except dkim_mod.SigningError as e:  # dkimpy cannot read this copy: sent as it is
            log.warning("message %s: not DKIM-signed: %s", job.message_id, e)
            return data
        if sealed.unsigned_removal:
            domain = sealed.from_domain or "(no From: domain)"
            if domain not in self._dkim_warned:  # one line per domain, not one per message
                self._dkim_warned.add(domain)
                log.warning("DKIM: copies from %s that relay changes lose their signatures (they would "
                            "fail) and go out unsigned: add a [dkim.\"%s\"] key to sign them", domain, domain)
        return sealed.data

    async def _record(self, job: Job, replies: dict[str, Reply]) -> None:
        """Commit each recipient's outcome with its events (and any DSN) in one transaction."""
        now = time.time()
        v = judge(mail=job.mail, attempts=job.attempts, replies=replies, accepted_at=job.accepted_at,
                  now=now, policy=self._policy, reporting_mta=self._config.smtp.hostname,
                  feedback_id=new_message_id(now))
        attempts = dict(job.attempts)  # applied to the job only once committed
        for rcpt, tries, _, _ in v.deferred:
            attempts[rcpt] = tries
        for rcpt, _ in v.delivered + v.bounced:
            attempts.pop(rcpt, None)
        finished = not attempts
        stmts = result_statements(job.message_id, delivered=v.delivered, bounced=v.bounced,
                                  deferred=v.deferred, finished=finished,
                                  keep_body=self._config.storage.body_retention_days > 0)
        events: list[tuple[dict[str, Any], str | None]] = [*job.pending_events, *v.events]
        for record, about in events:
            stmts += self._bus.statements(job.configuration_set, record, about)
        stmts += self._suppress(job, v.events, now)
        notice = self._dsn_job(job, v.failed, now) if v.failed else None
        if notice is not None:
            stmts += put_statements(notice)  # the DSN is spooled in the same commit
        await self._spool.write(stmts)
        self._bus.committed()
        log_outcomes(job.message_id, delivered=v.delivered, bounced=v.bounced, deferred=v.deferred, replies=replies)
        if job.pending_events:
            job.rendering_reported = True
            job.pending_events = []
        job.attempts = attempts
        if notice is not None:
            self._schedule.add(notice)
        # A waiting job keeps no body in memory (reloaded from the spool when due), so a
        # long upstream outage costs disk, not RAM.
        job.data = None
        job.prepared = None
        if not finished:
            job.due = min(at for _, _, at, _ in v.deferred) if v.deferred else now
            self._schedule.add(job)

    def _suppress(self, job: Job, events: list[tuple[dict[str, Any], str]], now: float) -> list[Statement]:
        """SES adds a hard-bounced address to the account suppression list: each Permanent
        bounce of this attempt (the upstream's 5xx too), not relay's own refusals."""
        if "bounce" not in self._config.suppressed_reasons(job.configuration_set):
            return []
        stmts: list[Statement] = []
        for record, rcpt in events:
            bounce = record.get("bounce") or {}
            if bounce.get("bounceType") == "Permanent" and bounce.get("bounceSubType") not in REFUSALS:
                stmts += suppression_store.suppress_statements(rcpt, "BOUNCE", job.message_id, now)
        return stmts

    def _dsn_job(self, job: Job, failed: list[dsn_mod.FailedRecipient], now: float) -> Job | None:
        """An RFC 3464 bounce to the envelope sender; never to the null sender (RFC 5321 §4.5.5)."""
        if not job.mail_from:
            return None
        assert job.data is not None
        header_block, _ = split_header_block(job.data)
        mid = new_message_id(now)
        hostname = self._config.smtp.hostname
        try:
            data = dsn_mod.build_dsn(
                reporting_mta=hostname, envid=job.message_id, original_sender=job.mail_from,
                original_headers=header_block, failed=failed,
                arrival_date=datetime.fromtimestamp(job.accepted_at, timezone.utc),
                now=datetime.fromtimestamp(now, timezone.utc), message_id=f"{mid}@{hostname}")
        except ValueError as e:  # e.g. a sender no DSN can be addressed to: the Bounce event stays
            log.warning("no DSN for %s: %s", job.message_id, e)
            return None
        info = records.MailInfo(
            message_id=mid, timestamp=datetime.fromtimestamp(now, timezone.utc), source="",
            destination=(job.mail_from,), headers=(), headers_truncated=False,
            common_headers={"subject": "Undelivered Mail Returned to Sender"},
            tags={NOTICE_TAG: ["dsn"]})  # relay's own mail: shown in timelines, not counted as sent
        return Job(message_id=mid, accepted_at=now, configuration_set=None, mail_from="",
                   mail=info, tracked=False, attempts={job.mail_from: 0}, due=now, data=data)


def _dkim_signer(config: Config) -> dkim_mod.DkimSigner:
    """The signer for the [dkim.<domain>] keys (read and checked by config.parse already)."""
    keys = {}
    for domain, d in config.dkim.items():
        key = d.key
        if key is None:  # a Config built in code, not parsed: read the key now
            try:
                key = dkim_mod.read_key(d.private_key)
            except dkim_mod.KeyProblem as e:
                raise ConfigError(f"dkim.{domain}.private_key: {e}") from None
        keys[domain] = dkim_mod.DomainKey(domain=domain, selector=d.selector, key=key, sign_all=d.sign == "all")
    # Intake removed these before spooling (SES does too): a signature covering them fails.
    removed = frozenset(SES_CONTROL_HEADERS) | {config.smtp.config_set_header.lower(), config.smtp.tags_header.lower()}
    return dkim_mod.DkimSigner(keys, removed_headers=removed)


def log_outcomes(message_id: str, *, delivered: Sequence[tuple[str, str]], bounced: Sequence[tuple[str, str]],
                 deferred: Sequence[tuple[str, int, float, str]], replies: Mapping[str, Reply]) -> None:
    """One line per recipient's recorded outcome; copies that got no reply at all (the
    upstream is unreachable) share one line per attempt instead of one per recipient."""
    def fields(rcpt: str | None, outcome: str, reply: str, at: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"message_id": message_id, "outcome": outcome, "reply": reply}
        if rcpt is not None:
            out["recipient"] = rcpt
        if at is not None:
            out["next_attempt"] = records.iso(datetime.fromtimestamp(at, timezone.utc))
        return out

    for rcpt, reply in delivered:
        log.info("delivered %s to %s: %s", message_id, rcpt, reply, extra=fields(rcpt, "delivered", reply))
    for rcpt, reason in bounced:
        log.info("bounced %s to %s: %s", message_id, rcpt, reason, extra=fields(rcpt, "bounced", reason))
    unreachable: dict[str, tuple[int, float]] = {}  # reply -> (recipients, earliest next attempt)
    for rcpt, _, at, reply in deferred:
        if replies[rcpt].code == 0:
            n, first = unreachable.get(reply, (0, at))
            unreachable[reply] = (n + 1, min(first, at))
            continue
        iso_at = records.iso(datetime.fromtimestamp(at, timezone.utc))
        log.info("deferred %s to %s: %s; next attempt at %s", message_id, rcpt, reply, iso_at,
                 extra=fields(rcpt, "deferred", reply, at))
    for reply, (n, at) in unreachable.items():
        iso_at = records.iso(datetime.fromtimestamp(at, timezone.utc))
        # No reply is usually the upstream's fault; relay's own failures say so in the reply.
        what = "not sent (internal error)" if INTERNAL_ERROR in reply else "upstream unreachable"
        log.warning("%s for %s, %d recipient(s) deferred: %s; next attempt at %s", what, message_id, n, reply,
                    iso_at, extra={**fields(None, "unreachable", reply, at), "recipients": n})


def _internal_error(e: BaseException) -> Reply:
    """A copy that failed inside relay: deferred like a lost connection (then bounced in time)."""
    return Reply(0, f"{INTERNAL_ERROR} while sending: {type(e).__name__}: {e}")


def _is_internal_error(reply: Reply) -> bool:
    """No reply because relay itself failed on this copy (here or in the upstream client)."""
    return reply.code == 0 and INTERNAL_ERROR in reply.message
