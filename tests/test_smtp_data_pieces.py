# DATA is read a piece at a time (up to each ".\r\n") and decoded with bytes methods;
# it must give exactly what the line-by-line reader it replaced gave: the same
# message, the same end of data (so pipelined commands after it stay unread), the
# same refusals. The old reader is kept here as the oracle.
from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.smtp import replies
from relay.smtp.data import DataDecoder
from relay.smtp.session import next_piece

AFTER = b"QUIT\r\n"  # a pipelined command after the data: must stay in the stream


async def line_reader(reader: asyncio.StreamReader, line_limit: int,
                      size_limit: int | None) -> tuple[bytes, str | None]:
    """The reader relay had until this change (relay/smtp/session.py, one await per line)."""
    buf = bytearray()
    refusal: str | None = None
    total = 0
    after_crlf = True
    last = b""
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as e:
            line = await reader.read(e.consumed)
            refusal = refusal or replies.LINE_TOO_LONG
        if after_crlf and line == b".\r\n":
            break
        total += len(line)
        if refusal is None:
            if size_limit and total > size_limit:
                refusal = replies.TOO_MUCH_DATA
            elif len(line) > line_limit:
                refusal = replies.LINE_TOO_LONG
            if refusal is not None:
                buf = bytearray()
            elif after_crlf and line[:1] == b".":
                buf += memoryview(line)[1:]
            else:
                buf += line
        after_crlf = line.endswith(b"\r\n") or (line == b"\n" and last == b"\r")
        last = line[-1:]
    return bytes(buf), refusal


async def piece_reader(reader: asyncio.StreamReader, line_limit: int,
                       size_limit: int | None) -> tuple[bytes, str | None]:
    decoder = DataDecoder(line_limit=line_limit, size_limit=size_limit)
    while not decoder.feed(await next_piece(reader)):
        pass
    return bytes(decoder.content), decoder.refusal


def run(read, stream: bytes, cuts: list[int], limit: int, size_limit: int | None) -> tuple[bytes, str | None, bytes]:
    async def go() -> tuple[bytes, str | None, bytes]:
        reader = asyncio.StreamReader(limit=limit)

        async def feed() -> None:
            at = 0
            for cut in sorted(set(c % (len(stream) + 1) for c in cuts)) + [len(stream)]:
                reader.feed_data(stream[at:cut])
                at = cut
                await asyncio.sleep(0)  # the reader sees the stream arrive in these pieces
            reader.feed_eof()

        feeder = asyncio.create_task(feed())
        content, refusal = await asyncio.wait_for(read(reader, limit, size_limit), 5)
        await feeder
        # A refused message's content is never used (the old reader could keep a line of it).
        return (content if refusal is None else b""), refusal, await reader.read()
    return asyncio.run(go())


ATOMS = [b"a", b"b", b".", b"..", b"\r", b"\n", b"\r\n", b".\r\n", b"\r\n.", b"\r\n..\r\n", b"\n.\n",
         b"\r.\r", b"x" * 30, b"\n.\r\n", b"\r\n.\n", b"..\r\n"]
streams = st.lists(st.sampled_from(ATOMS), max_size=60).map(b"".join)
cut_lists = st.lists(st.integers(min_value=0, max_value=10_000), max_size=8)


@settings(max_examples=400, deadline=None)
@given(body=streams, cuts=cut_lists, limit=st.integers(min_value=4, max_value=40))
def test_same_message_and_end_as_the_line_reader(body: bytes, cuts: list[int], limit: int) -> None:
    # The data always ends: a CRLF, then the end-of-data line, then a pipelined command.
    stream = body + b"\r\n.\r\n" + AFTER
    assert run(piece_reader, stream, cuts, limit, None) == run(line_reader, stream, cuts, limit, None)


@settings(max_examples=200, deadline=None)
@given(body=streams, cuts=cut_lists, size_limit=st.integers(min_value=1, max_value=200))
def test_same_size_refusal_as_the_line_reader(body: bytes, cuts: list[int], size_limit: int) -> None:
    stream = body + b"\r\n.\r\n" + AFTER
    assert (run(piece_reader, stream, cuts, 10_000, size_limit)
            == run(line_reader, stream, cuts, 10_000, size_limit))


@settings(max_examples=200, deadline=None)
@given(body=streams, cuts=cut_lists, limit=st.integers(min_value=4, max_value=40),
       size_limit=st.integers(min_value=1, max_value=200))
def test_both_limits_refuse_the_same_messages(body: bytes, cuts: list[int], limit: int, size_limit: int) -> None:
    # With both limits in play the reply may name the other one (the first violation is
    # found per piece, not per line); whether the message is refused, and where the data
    # ends, may not differ.
    stream = body + b"\r\n.\r\n" + AFTER
    new = run(piece_reader, stream, cuts, limit, size_limit)
    old = run(line_reader, stream, cuts, limit, size_limit)
    assert (new[1] is None) == (old[1] is None)
    assert new[0] == old[0] and new[2] == old[2]


def test_empty_message_ends_at_once() -> None:
    assert run(piece_reader, b".\r\n" + AFTER, [], 1001, None) == (b"", None, AFTER)


def test_terminator_split_across_pieces_and_dot_unstuffing() -> None:
    stream = b"Subject: x\r\n\r\n..a\r\n.\r\n" + AFTER
    for cut in range(len(stream)):
        assert run(piece_reader, stream, [cut], 16, None) == (b"Subject: x\r\n\r\n.a\r\n", None, AFTER)


def test_smuggling_endings_do_not_end_data() -> None:
    stream = b"a\n.\nMAIL FROM:<x@y>\r\nb\r.\r\n" + b"c\r\n.\r\n" + AFTER
    content, refusal, rest = run(piece_reader, stream, [], 1001, None)
    assert content == b"a\n.\nMAIL FROM:<x@y>\r\nb\r.\r\nc\r\n" and refusal is None and rest == AFTER


def test_a_long_message_is_read_in_few_pieces() -> None:
    # The point of the change: ~1,750 lines without a ".\r\n" take a handful of reads.
    body = b"".join(b"line %d of a newsletter with no full stop at the end\r\n" % i for i in range(1750))
    reader_calls = 0

    async def go() -> bytes:
        nonlocal reader_calls
        reader = asyncio.StreamReader(limit=1001)
        reader.feed_data(body + b".\r\n" + AFTER)
        reader.feed_eof()
        decoder = DataDecoder(line_limit=1001, size_limit=None)
        while True:
            reader_calls += 1
            if decoder.feed(await next_piece(reader)):
                return bytes(decoder.content)
    assert asyncio.run(go()) == body
    assert reader_calls <= 3
