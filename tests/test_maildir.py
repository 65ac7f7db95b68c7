# The Maildir sink: each copy lands in new/, and a failed write (a full disk, here a
# file-size limit in a child process) leaves nothing behind in tmp/.
from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

from relay.upstream import MaildirUpstream

MESSAGE = b"From: a@example.com\r\nSubject: hi\r\n\r\n" + b"x" * 5000 + b"\r\n"


def test_delivered_copy_is_in_new_with_return_path(tmp_path: Path) -> None:
    box = MaildirUpstream(str(tmp_path / "box"))
    replies = asyncio.run(box.send("a@example.com", ["b@example.org"], MESSAGE))
    assert replies["b@example.org"].code == 250
    files = list((tmp_path / "box" / "new").iterdir())
    assert len(files) == 1 and files[0].read_bytes().startswith(b"Return-Path: <a@example.com>\r\n")
    assert list((tmp_path / "box" / "tmp").iterdir()) == []
    assert (files[0].stat().st_mode & 0o777) == 0o600  # mail is private


def test_failed_write_is_an_outcome_and_leaves_no_tmp_file(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import asyncio, resource, signal
        from relay.upstream import MaildirUpstream
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        replies = asyncio.run(MaildirUpstream({str(tmp_path / 'box')!r}).send(
            "a@example.com", ["b@example.org"], {MESSAGE!r}))
        print(replies["b@example.org"].code, replies["b@example.org"].message)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    code, _, message = out.stdout.strip().partition(" ")
    assert code == "0" and "maildir" in message  # deferred and retried, not lost
    assert list((tmp_path / "box" / "tmp").iterdir()) == []
    assert list((tmp_path / "box" / "new").iterdir()) == []
