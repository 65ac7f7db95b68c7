# Base64 bodies are checked strictly (RFC 4648 alphabet, whole quads, padding only at the
# end) and without holding memory in proportion to the body many times over.
from __future__ import annotations

import base64
import re
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.instrument.mime import MimeError, _decode_transfer

# The rule as a regular expression: what the decoder must accept, exactly.
RULE = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=16) | st.text(alphabet="AZaz09+/=-_ \r\n\x00", max_size=16).map(str.encode))
def test_accepts_exactly_strict_base64(data: bytes) -> None:
    compact = re.sub(rb"[ \t\r\n]+", b"", data)
    if RULE.fullmatch(compact):
        assert _decode_transfer("base64", data) == base64.b64decode(compact)
    else:
        with pytest.raises(MimeError, match="invalid base64"):
            _decode_transfer("base64", data)


def test_a_large_body_is_checked_in_bounded_memory() -> None:
    body = base64.encodebytes(b"<p>lorem ipsum dolor sit amet</p>\n" * 120_000).replace(b"\n", b"\r\n")  # ~5.6 MB
    tracemalloc.start()
    try:
        decoded = _decode_transfer("base64", body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(decoded) == 34 * 120_000
    assert peak < 4 * len(body)  # the compacted copy and the decoded bytes; the regex took ~40x
