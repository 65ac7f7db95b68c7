# The durable queue: a message is committed (fsync'd) before intake answers 250,
# each recipient's state moves pending -> delivered | bounced, and pending work
# is found again after a restart. Statement builders are pure; Store runs them.
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Sequence

from relay.events.records import MailInfo
from relay.store import BLOB_SLICE, WRITE_BLOB, Statement, Store, reads
from relay.unsubscribe import ListManagement


@dataclass(kw_only=True)
class Job:
    """One message with recipients still to deliver (in memory, rebuilt from the spool)."""

    message_id: str
    accepted_at: float
    configuration_set: str | None
    mail_from: str
    mail: MailInfo
    tracked: bool
    attempts: dict[str, int]  # pending recipient -> failed attempts so far
    due: float = 0.0
    data: bytes | None = None  # loaded lazily after a restart
    prepared: Any = None  # the instrumentation of `data`, kept across retries
    rendering_reported: bool = False
    # An attempt's upstream replies not yet recorded (the commit failed): recorded on
    # the next try instead of sending those copies again.
    replies: dict[str, Any] | None = None
    pending_events: list[tuple[dict[str, Any], str | None]] = field(default_factory=list)
    list_management: ListManagement | None = None  # X-SES-LIST-MANAGEMENT-OPTIONS as accepted


def mail_to_json(info: MailInfo) -> str:
    return json.dumps({
        "message_id": info.message_id, "timestamp": info.timestamp.isoformat(),
        "source": info.source, "destination": list(info.destination),
        "headers": [list(h) for h in info.headers], "headers_truncated": info.headers_truncated,
        "common_headers": info.common_headers, "tags": info.tags,
    }, ensure_ascii=False)


def mail_from_json(text: str) -> MailInfo:
    d = json.loads(text)
    return MailInfo(
        message_id=d["message_id"], timestamp=datetime.fromisoformat(d["timestamp"]),
        source=d["source"], destination=tuple(d["destination"]),
        headers=tuple((h[0], h[1]) for h in d["headers"]), headers_truncated=d["headers_truncated"],
        common_headers=d["common_headers"], tags=d["tags"],
    )


def put_statements(job: Job) -> list[Statement]:
    assert job.data is not None
    big = len(job.data) >= BLOB_SLICE  # its own row, written in slices (store/__init__.py)
    stmts: list[Statement] = [(
        "INSERT INTO messages(id, accepted_at, configuration_set, mail_from, data, mail, tracked, list_management) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (job.message_id, job.accepted_at, job.configuration_set, job.mail_from, None if big else job.data,
         mail_to_json(job.mail), int(job.tracked),
         job.list_management.to_json() if job.list_management is not None else None),
    )]
    if big:
        stmts += [("INSERT INTO message_bodies(message_id, data) VALUES (?, zeroblob(?))",
                   (job.message_id, len(job.data))),
                  (WRITE_BLOB, ("message_bodies", "data", "message_id", job.message_id, job.data))]
    for rcpt in job.attempts:
        stmts.append(("INSERT INTO recipients(message_id, recipient, next_attempt_at) VALUES (?, ?, ?)",
                      (job.message_id, rcpt, job.accepted_at)))
    return stmts


def result_statements(message_id: str, *, delivered: Sequence[tuple[str, str]] = (),
                      bounced: Sequence[tuple[str, str]] = (),
                      deferred: Sequence[tuple[str, int, float, str]] = (),
                      finished: bool = False, keep_body: bool = False) -> list[Statement]:
    """Record one attempt: (rcpt, reply) delivered/bounced, (rcpt, attempts, next_at, reply) deferred.

    keep_body: a finished message keeps its body (for the dashboard's preview) until prune()."""
    upd = "UPDATE recipients SET state = ?, last_reply = ? WHERE message_id = ? AND recipient = ?"
    stmts: list[Statement] = [(upd, ("delivered", reply, message_id, r)) for r, reply in delivered]
    stmts += [(upd, ("bounced", reply, message_id, r)) for r, reply in bounced]
    stmts += [("UPDATE recipients SET attempts = ?, next_attempt_at = ?, last_reply = ? "
               "WHERE message_id = ? AND recipient = ?", (n, at, reply, message_id, r))
              for r, n, at, reply in deferred]
    if finished and not keep_body:
        # Every recipient is final: the body is no longer needed (bounded growth);
        # the mail row stays for the tracking window's events.
        stmts.append(("UPDATE messages SET data = NULL WHERE id = ?", (message_id,)))
        stmts.append(("DELETE FROM message_bodies WHERE message_id = ?", (message_id,)))
    return stmts


class Spool:
    def __init__(self, store: Store) -> None:
        self._store = store

    @property
    def store(self) -> Store:
        """The file, for the read-only lookups of delivery (suppression list, contacts)."""
        return self._store

    async def put(self, job: Job, extra: Sequence[Statement] = ()) -> None:
        """Durably queue a new message; returns after the commit."""
        await self._store.write(put_statements(job) + list(extra))

    async def write(self, statements: Sequence[Statement]) -> None:
        await self._store.write(statements)

    async def pending(self, accepted_before: float | None = None) -> list[Job]:
        """Every message (accepted before a time) with a pending recipient, as after a
        restart (data not loaded)."""
        before = " AND m.accepted_at < ?" if accepted_before is not None else ""
        rows = await self._store.fetchall(
            "SELECT m.id, m.accepted_at, m.configuration_set, m.mail_from, m.mail, m.tracked, m.list_management, "
            "r.recipient, r.attempts, r.next_attempt_at FROM recipients r JOIN messages m "
            f"ON m.id = r.message_id WHERE r.state = 'pending'{before} ORDER BY m.id",
            (accepted_before,) if accepted_before is not None else ())
        jobs: dict[str, Job] = {}
        for mid, at, cset, sender, mail, tracked, lists, rcpt, attempts, next_at in rows:
            job = jobs.get(mid)
            if job is None:
                job = jobs[mid] = Job(message_id=mid, accepted_at=at, configuration_set=cset,
                                      mail_from=sender, mail=mail_from_json(mail),
                                      tracked=bool(tracked), attempts={}, due=next_at,
                                      list_management=ListManagement.from_json(lists))
            job.attempts[rcpt] = attempts
            job.due = min(job.due, next_at)
        return list(jobs.values())

    async def prune(self, before: float, *, bodies_before: float | None = None) -> None:
        """Forget finished messages accepted before `before` (bounded growth; Postal #1137),
        and the bodies of finished messages accepted before `bodies_before`.

        Hits after that are past the tracking window: still served from the token, not recorded.
        """
        finished = ("SELECT id FROM messages m WHERE m.accepted_at < ? AND NOT EXISTS "
                    "(SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.state = 'pending')")
        stmts: list[Statement] = [
            (f"DELETE FROM message_bodies WHERE message_id IN ({finished})", (before,)),
            (f"DELETE FROM recipients WHERE message_id IN ({finished})", (before,)),
            (f"DELETE FROM messages WHERE id IN ({finished})", (before,)),
            # Ids start with the acceptance time in hex ms, so they compare like times.
            ("DELETE FROM engagement WHERE message_id < ?", (f"{int(before * 1000):016x}",)),
            ("DELETE FROM link_engagement WHERE message_id < ?", (f"{int(before * 1000):016x}",)),
        ]
        if bodies_before is not None:
            stmts.append((f"UPDATE messages SET data = NULL WHERE data IS NOT NULL AND id IN ({finished})",
                          (bodies_before,)))
            stmts.append((f"DELETE FROM message_bodies WHERE message_id IN ({finished})", (bodies_before,)))
        await self._store.write(stmts)

    async def load_data(self, message_id: str) -> bytes | None:
        return await reads.message_body(self._store, message_id)

    async def by_header_message_id(self, header_id: str) -> str | None:
        """The message (the latest, if several) whose Message-ID: header was this."""
        row = await self._store.fetchone(
            "SELECT id FROM messages WHERE json_extract(mail, '$.common_headers.messageId') = ? "
            "ORDER BY accepted_at DESC LIMIT 1", (header_id,))
        return str(row[0]) if row else None

    async def mail(self, message_id: str) -> tuple[str | None, MailInfo] | None:
        """The configuration set and mail object of a message (for tracking events)."""
        row = await self._store.fetchone(
            "SELECT configuration_set, mail FROM messages WHERE id = ?", (message_id,))
        return (row[0], mail_from_json(row[1])) if row else None
