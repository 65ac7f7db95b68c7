# The listeners' limit bookkeeping (pure): caps, throttled logging, fd budget; and the
# counters the serving processes share (a real forked process).
from __future__ import annotations

import multiprocessing

from relay.limits import ConnectionLimits, LogThrottle, MemoryBudget, SharedCounters, connection_budget


def test_per_client_and_total_caps() -> None:
    limits = ConnectionLimits(total=3, per_client=2)
    assert limits.acquire("a") is None
    assert limits.acquire("a") is None
    assert limits.acquire("a") == "per_client"
    assert limits.acquire("b") is None
    assert limits.acquire("c") == "total"
    limits.release("a")
    assert limits.open_for("a") == 1
    assert limits.acquire("c") is None
    assert limits.count == 3


def test_release_of_unknown_client_is_harmless() -> None:
    limits = ConnectionLimits(total=1, per_client=1)
    limits.release("x")
    assert limits.count == 0
    assert limits.acquire("x") is None


def test_log_throttle_once_per_interval_and_counts_suppressed() -> None:
    now = [0.0]
    throttle = LogThrottle(interval=10, clock=lambda: now[0])
    assert throttle.should_log("k")
    assert not throttle.should_log("k")
    assert not throttle.should_log("k")
    assert throttle.suppressed("k") == 2
    assert throttle.should_log("other")
    now[0] = 10.0
    assert throttle.should_log("k")
    assert throttle.suppressed("k") == 0


def test_log_throttle_memory_is_bounded() -> None:
    throttle = LogThrottle(interval=10, clock=lambda: 0.0, max_keys=5)
    logged = [throttle.should_log(str(i)) for i in range(20)]
    assert logged[:5] == [True] * 5 and not any(logged[5:])


def test_budget_leaves_room_and_gives_http_the_larger_share() -> None:
    b = connection_budget(1024, upstream_connections=4)
    assert b.smtp + b.http <= 1024 - 64
    assert b.http > b.smtp >= 10
    tiny = connection_budget(50, upstream_connections=4)
    assert tiny.smtp >= 10 and tiny.http >= 10


def test_memory_budget_refuses_what_does_not_fit() -> None:
    budget = MemoryBudget(100)
    assert budget.reserve(60) and not budget.reserve(41) and budget.reserve(40)
    assert budget.free == 0
    budget.release(60)
    assert budget.free == 60 and budget.reserve(60)
    budget.release(1000)  # never below zero
    assert budget.used == 0


def _take_three(counters: SharedCounters) -> None:
    for _ in range(3):
        assert counters.take("192.0.2.1", 5)


def test_shared_counters_are_seen_by_a_forked_process() -> None:
    counters = SharedCounters()
    child = multiprocessing.get_context("fork").Process(target=_take_three, args=(counters,))
    child.start()
    child.join(10)
    assert child.exitcode == 0
    assert counters.value("192.0.2.1") == 3  # counted in the child, seen here
    assert counters.take("192.0.2.1", 4) is True and counters.take("192.0.2.1", 4) is False
    limits = ConnectionLimits(total=100, per_client=4, shared=counters)
    assert limits.acquire("192.0.2.1") == "per_client"  # this process holds none of the four
    counters.give("192.0.2.1")
    assert limits.acquire("192.0.2.1") is None and limits.open_for("192.0.2.1") == 4
    limits.release("192.0.2.1")
    assert counters.value("192.0.2.1") == 3


def test_shared_window_counts_restart_after_the_window() -> None:
    counters = SharedCounters()
    assert counters.add_in_window("198.51.100.7", 100.0, 10.0, 1) == 1
    assert counters.add_in_window("198.51.100.7", 105.0, 10.0, 1) == 2
    assert counters.add_in_window("198.51.100.7", 109.9, 10.0, 0) == 2
    assert counters.add_in_window("198.51.100.7", 110.0, 10.0, 0) == 0  # the window has passed
    assert counters.add_in_window("198.51.100.7", 111.0, 10.0, 1) == 1  # a new one starts here
    assert counters.add_in_window("198.51.100.7", 120.5, 10.0, 0) == 1
