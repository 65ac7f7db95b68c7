# The AUTH failure budget and credential check (pure, with a fake clock).
from __future__ import annotations

from relay.smtp.auth import Authenticator, FailureBudget


def test_budget_is_spent_then_refills_after_the_window() -> None:
    now = [0.0]
    budget = FailureBudget(3, 60, clock=lambda: now[0])
    assert not budget.record("a") and not budget.record("a")
    assert not budget.exhausted("a")
    assert budget.record("a") and budget.exhausted("a")
    assert not budget.exhausted("b")
    now[0] = 59.9
    assert budget.exhausted("a")
    now[0] = 60.0
    assert not budget.exhausted("a")
    assert not budget.record("a")  # a new window


def test_budget_memory_is_bounded() -> None:
    budget = FailureBudget(2, 60, clock=lambda: 0.0, max_clients=3)
    for client in "abcde":
        budget.record(client)
    assert len(budget._failures) == 3
    assert budget.record("e")  # the newest are kept


def test_authenticator() -> None:
    auth = Authenticator({"app": "pw"}, accept_any=False)
    assert auth.verify(b"app", b"pw") and not auth.verify(b"app", b"px") and not auth.verify(b"x", b"pw")
    assert auth.knows(b"app") and not auth.knows(b"x")
    assert Authenticator({}, accept_any=True).verify(b"any", b"thing")
