# The token key over a relay's life: links mailed with the generated key keep
# redirecting once [tracking] secrets are configured, and the file that holds the key
# (relay.db, its -wal and -shm) is readable by its owner only.
from __future__ import annotations

import os
import stat
from pathlib import Path

import aiohttp

from relay.store import Store
from relay.tokens import Signer
from tests.support import RelayProcess, Upstream, wait_for
from tests.test_serve import submit
from tests.test_tracking import HTML_MESSAGE, RCPTS, TRACKED, urls_in

CONFIGURED = "configured-secret-0123456789abcdef"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_links_survive_configuring_secrets_later(tmp_path: Path) -> None:
    up = await Upstream().start()
    relay = RelayProcess(tmp_path, TRACKED, upstream_url=f"smtp://127.0.0.1:{up.port}")
    try:
        await relay.start()
        await submit(relay.smtp_port, HTML_MESSAGE, sender="news@example.com", rcpts=RCPTS[:1])
        await wait_for(lambda: len(up.messages) == 1)
        old_pixels, old_links = urls_in(up.messages[0].data)
        assert await relay.stop() == 0

        relay.config_path.write_text(relay.config_path.read_text().replace(
            "[tracking]\n", f'[tracking]\nsecrets = ["{CONFIGURED}"]\n', 1))
        await relay.start()
        await submit(relay.smtp_port, HTML_MESSAGE, sender="news@example.com", rcpts=RCPTS[:1])
        await wait_for(lambda: len(up.messages) == 2)
        new_pixels, new_links = urls_in(up.messages[1].data)
        async with aiohttp.ClientSession() as http:
            for link in old_links + new_links:
                async with http.get(link, allow_redirects=False) as r:
                    assert r.status == 302 and r.headers["Location"] == "https://shop.example.com/spring?a=1&b=2"
            for pixel in old_pixels + new_pixels:
                async with http.get(pixel) as r:
                    assert r.status == 200
        await wait_for(lambda: relay.query("SELECT count(*) FROM events WHERE event_type = 'Click'") == [(4,)])
        # The configured secret signs the new links; the generated one only verifies.
        configured = Signer([CONFIGURED.encode()])
        assert configured.verify_click(new_links[0].split("/c/", 1)[1]) is not None
        assert configured.verify_click(old_links[0].split("/c/", 1)[1]) is None
    finally:
        await relay.stop()
        await up.stop()


async def test_no_key_is_generated_when_secrets_are_configured_from_the_start(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path, "")
    relay.config_path.write_text(relay.config_path.read_text().replace(
        "[tracking]\n", f'[tracking]\nsecrets = ["{CONFIGURED}"]\n', 1))
    try:
        await relay.start()
        assert relay.query("SELECT count(*) FROM settings WHERE key = 'token_secret'") == [(0,)]
    finally:
        await relay.stop()


async def test_database_files_are_owner_only(tmp_path: Path) -> None:
    up = await Upstream().start()
    relay = RelayProcess(tmp_path, TRACKED, upstream_url=f"smtp://127.0.0.1:{up.port}")
    try:
        await relay.start()
        await submit(relay.smtp_port, HTML_MESSAGE, sender="news@example.com", rcpts=RCPTS[:1])
        await wait_for(lambda: len(up.messages) == 1)
        for name in ("relay.db", "relay.db-wal", "relay.db-shm"):
            assert mode(tmp_path / name) == 0o600, name
    finally:
        await relay.stop()
        await up.stop()


async def test_store_tightens_files_made_before(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    for name in ("old.db", "old.db-wal"):
        (tmp_path / name).touch()
        os.chmod(tmp_path / name, 0o644)
    store = Store(str(path))
    await store.open()
    try:
        await store.write([("INSERT INTO settings(key, value) VALUES ('k', 'v')", ())])
        for name in ("old.db", "old.db-wal", "old.db-shm"):
            assert mode(tmp_path / name) == 0o600, name
    finally:
        await store.close()
