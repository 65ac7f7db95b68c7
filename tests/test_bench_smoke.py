# The benchmark suite's smoke mode keeps bench/suite.py working: it runs every scenario
# with tiny counts (no installs; rows whose tools are missing say SKIP) and prints one
# table with a row per scenario. Figures are not checked: nothing here asserts a time.
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROWS = ["1", "2", "3", "4", "5", "6a", "6b", "7a", "7b", "8"]


def test_suite_smoke_prints_every_row(tmp_path: Path) -> None:
    out = tmp_path / "latest.md"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "suite.py"), "--smoke", "--output", str(out),
                           "--workdir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = [line for line in proc.stdout.splitlines() if re.match(r"\| \w+ \|", line)]
    results = {line.split("|")[1].strip(): line.split("|")[-2].strip() for line in table}
    assert list(results) == ROWS, proc.stdout[-3000:]
    assert set(results.values()) <= {"PASS", "MISS", "SKIP"}, results
    # rows 5, 7 and 8 need nothing but relay: they always run
    for row in ("5", "7a", "7b", "8"):
        assert results[row] != "SKIP", proc.stdout[-3000:]
    written = out.read_text()
    assert "| 8 |" in written and "aiosmtpd" in written
    assert not list(tmp_path.glob("relay-suite-*")), "the work directory is removed"
