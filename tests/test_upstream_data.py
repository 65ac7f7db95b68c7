# DATA to the upstream goes out in slices with flow control (a big message costs no
# whole-message copies); the bytes on the wire must stay exactly aiosmtplib's.
from __future__ import annotations

import random

from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given, settings
from hypothesis import strategies as st

from relay import config as cfg
from relay.upstream import SmtpUpstream, data_chunks
from tests.support import Upstream


def wire(message: bytes) -> bytes:
    """What aiosmtplib's data() writes after DATA (the oracle)."""
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"


@settings(max_examples=500)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"..", b"a", b"\xff", b" "]), max_size=60),
       st.integers(min_value=1, max_value=9))
def test_slices_join_to_aiosmtplibs_wire_form(pieces: list[bytes], size: int) -> None:
    message = b"".join(pieces)
    assert b"".join(data_chunks(message, size)) == wire(message)


def test_slices_are_bounded() -> None:
    message = b"".join(b".line %d\r\n" % i for i in range(100_000))
    sizes = [len(c) for c in data_chunks(message, 4096)]
    assert len(sizes) > 100 and max(sizes) < 2 * 4096  # a slice, its last line and doubled dots


async def test_a_big_message_arrives_byte_for_byte() -> None:
    # Bare LFs, a bare CR, leading dots and no final line ending, over many slices.
    rng = random.Random(5)
    lines = [rng.choice([b".dot", b"..two", b"plain text line", b"x" * 900]) for _ in range(20_000)]
    message = b"Subject: big\r\n\r\n" + b"\r\n".join(lines[:10_000]) + b"\n" + b"\n".join(lines[10_000:]) + b"\rend"
    upstream = await Upstream().start()
    try:
        config = cfg.parse({"upstream": {"url": f"smtp://127.0.0.1:{upstream.port}", "timeout": 5}})
        up = SmtpUpstream(config.upstream, local_hostname="relay.test")
        try:
            replies = await up.send("a@example.com", ["b@example.org"], message)
        finally:
            await up.close()
        assert replies["b@example.org"].code == 250
        # aiosmtpd undoes the dot-stuffing; the rest is the normalised message.
        assert upstream.messages[0].data == normalize_message_line_endings(message)
    finally:
        await upstream.stop()
