# The listeners' limit bookkeeping (pure): caps, throttled logging, fd budget.
from __future__ import annotations

from relay.limits import ConnectionLimits, LogThrottle, MemoryBudget, connection_budget


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
