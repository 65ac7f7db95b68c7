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
