# AUTH against guessing: a delay after each failure (Postfix smtpd_error_sleep_time),
# a disconnect after a few failures per connection, a failure budget per client
# address over time, 503 inside a transaction (RFC 4954 §4), one log line per
# client per interval, and never a password in the log.
from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest

from relay import config as cfg
from relay.errors import ConfigError
from tests.smtp_harness import Client, running, session

PASSWORD = "right-horse-battery"
USERS = {"users": {"app": PASSWORD}}
OK = "235 2.7.0 Authentication successful"
INVALID = "535 5.7.8 Authentication credentials invalid"
TOO_MANY = "421 4.7.0 Too many authentication failures"
IN_TRANSACTION = "503 5.5.1 AUTH not permitted during a mail transaction"


def plain(user: str, password: str) -> str:
    return "AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode()


async def test_disconnect_after_failures_per_connection(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with running(tmp_path, auth_failure_delay=0.05, auth_max_failures_per_connection=3, **USERS) as app:
        c = await session(app.config.smtp.listen.port)
        async with c:
            assert await c.cmd(plain("app", "guess-1")) == INVALID
            assert await c.cmd(plain("app", "guess-2")) == INVALID
            assert await c.cmd(plain("app", "guess-3")) == TOO_MANY
            assert await c.closed()
    failures = [r for r in caplog.records if "AUTH failed" in r.getMessage()]
    assert len(failures) == 1  # one line per client per interval, not per failure
    assert all("guess-" not in r.getMessage() for r in caplog.records)


async def test_budget_per_address_refuses_even_the_right_password(tmp_path: Path) -> None:
    async with running(tmp_path, auth_failure_delay=0.05, auth_max_failures_per_connection=2,
                       auth_failure_budget=3, auth_failure_window=60, **USERS) as app:
        port = app.config.smtp.listen.port
        for _ in range(2):  # 2 + 2 failures > a budget of 3
            c = await session(port)
            async with c:
                while (await c.cmd(plain("app", "wrong"))) == INVALID:
                    pass
                assert await c.closed()
        c = await session(port)
        async with c:
            assert await c.cmd(plain("app", PASSWORD)) == TOO_MANY
            assert await c.closed()
        c = await session(port, "127.0.0.2")  # another address is not affected
        async with c:
            assert await c.cmd(plain("app", PASSWORD)) == OK


async def test_auth_inside_a_transaction_is_refused(tmp_path: Path) -> None:
    async with running(tmp_path, **USERS) as app:
        c = await session(app.config.smtp.listen.port)
        async with c:
            assert (await c.cmd("MAIL FROM:<a@example.com>")).startswith("250")
            assert await c.cmd(plain("app", PASSWORD)) == IN_TRANSACTION
            assert (await c.cmd("RSET")).startswith("250")
            assert await c.cmd(plain("app", PASSWORD)) == OK


async def test_no_password_oracle_outside_allowed_clients(tmp_path: Path) -> None:
    async with running(tmp_path, allowed_clients=["127.0.0.2"], **USERS) as app:
        async with await Client.connect(app.config.smtp.listen.port, "127.0.0.1") as c:
            assert (await c.reply()).startswith("554 5.7.1")
            assert await c.closed()


async def test_right_password_after_a_failure_still_works(tmp_path: Path) -> None:
    async with running(tmp_path, auth_failure_delay=0.05, **USERS) as app:
        c = await session(app.config.smtp.listen.port)
        async with c:
            assert await c.cmd(plain("app", "typo")) == INVALID
            assert await c.cmd(plain("app", PASSWORD)) == OK


def test_auth_config_defaults_and_validation() -> None:
    smtp = cfg.parse({}).smtp
    assert smtp.auth_failure_delay == 1.0
    assert smtp.auth_max_failures_per_connection == 3
    assert smtp.auth_failure_budget == 10 and smtp.auth_failure_window == 600.0
    for key, bad in (("auth_failure_delay", -1), ("auth_max_failures_per_connection", 0),
                     ("auth_failure_budget", 0), ("auth_failure_window", 0)):
        with pytest.raises(ConfigError, match=f"smtp.{key}"):
            cfg.parse({"smtp": {key: bad}})


async def test_auth_login_failures_count_too(tmp_path: Path) -> None:
    async with running(tmp_path, auth_failure_delay=0.05, auth_max_failures_per_connection=2, **USERS) as app:
        c = await session(app.config.smtp.listen.port)
        async with c:
            for expected in (INVALID, TOO_MANY):
                assert (await c.cmd("AUTH LOGIN")).startswith("334 ")
                assert (await c.cmd(base64.b64encode(b"app").decode())).startswith("334 ")
                assert await c.cmd(base64.b64encode(b"wrong").decode()) == expected
            assert await c.closed()
