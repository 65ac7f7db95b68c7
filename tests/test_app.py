# The composition root in process: failure paths that a subprocess cannot easily
# provoke. Real SMTP on loopback, a real SQLite file.
from __future__ import annotations

from pathlib import Path

import aiosmtplib
import pytest

from relay import config as cfg
from relay.app import App
from tests.support import Upstream, free_port


def make_config(tmp_path: Path, upstream_port: int) -> cfg.Config:
    return cfg.parse({
        "smtp": {"listen": f"127.0.0.1:{free_port()}", "default_configuration_set": "plain"},
        "tracking": {"listen": f"127.0.0.1:{free_port()}"},
        "storage": {"path": str(tmp_path / "relay.db")},
        "upstream": {"url": f"smtp://127.0.0.1:{upstream_port}"},
        "configuration_sets": {"plain": {"event_destinations": [
            {"name": "db", "type": "sqlite", "matching_event_types": ["send", "delivery"]}]}},
    })


async def test_spool_failure_answers_451_and_queues_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    up = await Upstream().start()
    config = make_config(tmp_path, up.port)
    app = App(config)
    await app.start()
    try:
        # The disk "goes away": the writer's connection is gone, every commit fails.
        assert app.store._writer is not None
        await app.store._in_writer(app.store._writer.close)  # on its own thread, as sqlite3 wants
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=config.smtp.listen.port, timeout=10) as s:
            with pytest.raises(aiosmtplib.SMTPDataError) as e:
                await s.sendmail("a@example.com", ["b@example.org"], b"Subject: x\r\n\r\nbody\r\n")
        assert e.value.code == 451 and "4.3.0" in e.value.message
        assert up.messages == []
        [line] = [r for r in caplog.records if getattr(r, "outcome", None) == "refused"]  # the transaction's line
        assert getattr(line, "reply", "").startswith("451 4.3.0") and line.exc_info is not None
    finally:
        app.store._writer = None  # already closed above
        await app.stop()
        await up.stop()


async def test_port_in_use_fails_start_cleanly(tmp_path: Path) -> None:
    up = await Upstream().start()
    config = make_config(tmp_path, up.port)
    first = App(config)
    await first.start()
    try:
        second = App(cfg.parse({
            "smtp": {"listen": str(config.smtp.listen)},
            "tracking": {"listen": f"127.0.0.1:{free_port()}"},
            "storage": {"path": str(tmp_path / "other.db")},
        }))
        with pytest.raises(OSError):
            await second.start()
        await second.stop()  # what did start is shut down again
    finally:
        await first.stop()
        await up.stop()
