"""The instrumentation core and tokens are pure: no I/O frameworks, no logging."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

import relay

RELAY = pathlib.Path(relay.__file__).parent
PURE_FILES = [*sorted((RELAY / "instrument").glob("*.py")), RELAY / "tokens.py"]
IO_FRAMEWORKS = {"asyncio", "aiohttp", "aiosmtpd", "aiosqlite", "aiosmtplib", "logging"}
FORBIDDEN = IO_FRAMEWORKS | {"socket", "sqlite3", "time", "os"}  # in our own source


@pytest.mark.parametrize("path", PURE_FILES, ids=lambda path: path.name)
def test_no_forbidden_imports_in_source(path: pathlib.Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN


@pytest.mark.parametrize("path", PURE_FILES, ids=lambda path: path.name)
def test_module_conventions(path: pathlib.Path) -> None:
    source = path.read_text(encoding="utf-8")
    assert source.startswith("# "), "opens with a comment on what the module owns"
    assert "from __future__ import annotations" in source


def test_importing_pulls_in_no_io_framework() -> None:
    # A fresh interpreter: pytest itself (pytest-asyncio) has already imported asyncio here.
    # (The stdlib email package imports socket for make_msgid; that is not I/O.)
    code = (
        "import sys, relay.instrument, relay.tokens\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(IO_FRAMEWORKS)!r}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=RELAY.parent)
    assert result.stdout.strip() == "[]"
