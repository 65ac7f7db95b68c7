# The header block reader: spans, unfolding, odd lines; shared by intake and event records.
from __future__ import annotations

import pytest

from relay.headers import header_fields, split_header_block


@pytest.mark.parametrize("data, block, body_at", [
    (b"A: b\r\nC: d\r\n\r\nbody", b"A: b\r\nC: d\r\n", 14),
    (b"A: b\nC: d\n\nbody", b"A: b\nC: d\n", 11),
    (b"\r\nbody", b"", 2),
    (b"A: b", b"A: b", 4),
])
def test_split_header_block(data: bytes, block: bytes, body_at: int) -> None:
    assert split_header_block(data) == (block, body_at)


def test_fields_unfold_skip_junk_and_keep_spans() -> None:
    block = b"Subject: hi\r\n  there\r\nnot a field\r\n  its continuation\r\nName : v\r\nX-Bad: \xff\r\n"
    fields = header_fields(block)
    assert [(f.name, f.value) for f in fields] == [("Subject", "hi  there"), ("Name", "v"), ("X-Bad", "\ufffd")]
    assert block[fields[0].start:fields[0].end] == b"Subject: hi\r\n  there\r\n"
    assert block[fields[1].start:fields[1].end] == b"Name : v\r\n"


def test_add_header_after_the_trace_fields_in_the_message_line_ending() -> None:
    from relay.headers import add_header

    crlf = b"Received: from x\r\n\tby y\r\nReturn-Path: <a@b>\r\nFrom: a@b\r\nSubject: s\r\n\r\nbody\r\n"
    assert add_header(crlf, "Feedback-ID", "a:relay:h") == (
        b"Received: from x\r\n\tby y\r\nReturn-Path: <a@b>\r\nFeedback-ID: a:relay:h\r\nFrom: a@b\r\nSubject: s\r\n\r\nbody\r\n")
    lf = crlf.replace(b"\r\n", b"\n")
    assert add_header(lf, "X", "v") == b"Received: from x\n\tby y\nReturn-Path: <a@b>\nX: v\nFrom: a@b\nSubject: s\n\nbody\n"
    assert add_header(b"From: a\r\n\r\nb", "X", "v") == b"X: v\r\nFrom: a\r\n\r\nb"
    kept = b"From: a\r\nfeedback-id: mine\r\n\r\nb"
    assert add_header(kept, "Feedback-ID", "relay's", unless_present=True) == kept
