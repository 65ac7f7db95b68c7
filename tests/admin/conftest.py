# The browser for the dashboard tests: Debian's chromium. CI runs as root on a fresh
# machine, so a missing browser is installed here (bounded) rather than skipped: a
# browser test that skips in CI tests nothing.
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
INSTALL_TIMEOUT = 900  # apt-get update and ~100 MB of packages on a slow mirror


def _apt(*args: str) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(["apt-get", *args], capture_output=True, text=True, timeout=INSTALL_TIMEOUT, env=env)
    if r.returncode != 0:
        pytest.fail(f"apt-get {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of Debian's chromium, installed with apt-get when missing and we are root."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        message = (f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium) "
                   "or run the suite as root, which installs it")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    _apt("update")
    _apt("install", "-y", "--no-install-recommends", "chromium")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"apt-get install chromium did not provide {CHROMIUM}")
    return CHROMIUM


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
