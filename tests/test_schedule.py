# The delivery schedule: due order, and the cap on message bodies it keeps in memory.
from __future__ import annotations

from datetime import datetime, timezone

from relay.delivery import Schedule
from relay.events.records import MailInfo
from relay.spool import Job


def job(mid: str, due: float, data: bytes | None) -> Job:
    mail = MailInfo(message_id=mid, timestamp=datetime.now(timezone.utc), source="a@example.com",
                    destination=("b@example.org",), headers=(), headers_truncated=False,
                    common_headers={}, tags={})
    return Job(message_id=mid, accepted_at=0.0, configuration_set=None, mail_from="a@example.com",
               mail=mail, tracked=False, attempts={"b@example.org": 0}, due=due, data=data)


async def test_bodies_beyond_the_budget_are_left_in_the_spool() -> None:
    schedule = Schedule(clock=lambda: 100.0, max_held_bytes=100)
    first, second, third = job("m1", 1.0, b"x" * 60), job("m2", 2.0, b"y" * 60), job("m3", 3.0, b"z" * 40)
    for j in (first, second, third):
        schedule.add(j)
    assert first.data is not None and second.data is None and third.data is not None  # 60 + 40 fit, 60 more not
    assert schedule.held_bytes == 100
    assert await schedule.take() is first and schedule.held_bytes == 40
    assert await schedule.take() is second and schedule.held_bytes == 40
    assert await schedule.take() is third and schedule.held_bytes == 0
