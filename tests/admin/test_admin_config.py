# [admin]: on by default in the embedded config, only with an [admin] section in a
# file, never on the tracking port, and never off loopback without a token.
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from relay import config as cfg
from relay.errors import ConfigError
from tests.support import free_port

TOKEN = "0123456789abcdef-token"


def test_embedded_default_has_admin_on_loopback_8025() -> None:
    admin = cfg.default_config().admin
    assert admin is not None and str(admin.listen) == "127.0.0.1:8025" and admin.token is None


def test_file_without_admin_section_has_no_admin() -> None:
    assert cfg.parse({}).admin is None


def test_admin_section_defaults() -> None:
    admin = cfg.parse({"admin": {}}).admin
    assert admin == cfg.AdminConfig()


@pytest.mark.parametrize("table, key, fragment", [
    ({"listen": "0.0.0.0:8025"}, "admin.token", "not loopback"),
    ({"listen": "[::]:8025"}, "admin.token", "not loopback"),
    ({"listen": "192.0.2.1:8025"}, "admin.token", "not loopback"),
    ({"token": "short"}, "admin.token", "at least 16 characters"),
    ({"token": 12345678901234567}, "admin.token", "at least 16 characters"),
    ({"listen": "127.0.0.1:8080"}, "admin.listen", "tracking.listen"),
    ({"listen": "0.0.0.0:8080", "token": TOKEN}, "admin.listen", "tracking.listen"),
    ({"listen": "127.0.0.1:2525"}, "admin.listen", "smtp.listen"),
    ({"listen": "nonsense"}, "admin.listen", "host:port"),
    ({"users": 1}, "admin.users", "unknown key"),
])
def test_bad_admin_config_names_the_key(table: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        cfg.parse({"admin": table})
    message = str(e.value)
    assert key in message and fragment in message and "\n" not in message
    assert TOKEN not in message and "short" not in message  # a token is never echoed


def test_token_allows_any_address() -> None:
    admin = cfg.parse({"admin": {"listen": "0.0.0.0:8025", "token": TOKEN}}).admin
    assert admin is not None and admin.token == TOKEN and TOKEN not in repr(admin)


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_non_loopback_without_token_refuses_to_start(tmp_path: Path, command: str) -> None:
    config = tmp_path / "relay.toml"
    smtp, tracking = free_port(), free_port()
    config.write_text(f'[smtp]\nlisten = "127.0.0.1:{smtp}"\n[tracking]\nlisten = "127.0.0.1:{tracking}"\n'
                      f'[storage]\npath = "{tmp_path / "relay.db"}"\n[admin]\nlisten = "0.0.0.0:{free_port()}"\n')
    r = subprocess.run([sys.executable, "-m", "relay.cli", command, "--config", str(config)],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "admin.token" in lines[0] and str(config) in lines[0]
    assert not (tmp_path / "relay.db").exists()  # refused before anything was opened or bound
