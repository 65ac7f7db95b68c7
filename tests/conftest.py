# Fixtures shared by the suite: a real, open Store on a temporary SQLite file.
from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import pytest

from relay.store import Store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(str(tmp_path / "relay.db"))
    await s.open()
    try:
        yield s
    finally:
        await s.close()
