# A big tracked message must not cost several whole copies of itself on its way through
# delivery (issue 9, row 7a). Allocations are traced around each in-process stage, with
# real parts: prepare(), personalize() and the DATA slices the upstream writes.
from __future__ import annotations

import tracemalloc
from typing import Callable, TypeVar

from relay.instrument import TrackingOptions, personalize, prepare
from relay.tokens import Signer
from relay.upstream import DATA_CHUNK, data_chunks

T = TypeVar("T")
MB = 1024 * 1024


def big_message(size: int) -> bytes:
    """A newsletter of short lines: a text part and an HTML part with links, `size` bytes or so."""
    line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"
    n = size // 2 // len(line)
    links = "".join(f'<p><a href="https://shop.example.com/item/{i}?a=1&amp;b=2">Item {i}</a></p>\r\n'
                    for i in range(20))
    return ("From: <news@example.com>\r\nTo: <reader@example.org>\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n"
            "--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
            + "See https://example.com/docs\r\n" + line * n
            + "--b1\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
            + "<html><body>\r\n" + links + f"<p>{line[:-2]}</p>\r\n" * n
            + "</body></html>\r\n--b1--\r\n").encode()


def traced_peak(fn: Callable[[], T]) -> tuple[T, float]:
    """fn()'s result and the most it allocated on top of what was live before, in MB."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = fn()
        return result, (tracemalloc.get_traced_memory()[1] - before) / MB
    finally:
        tracemalloc.stop()


def test_a_big_tracked_message_costs_a_few_copies_at_most() -> None:
    raw = big_message(6 * MB)
    size = len(raw) / MB
    prepared, peak = traced_peak(lambda: prepare(raw, TrackingOptions(open=True, click=True)))
    assert prepared.failure is None and len(prepared.links) == 21
    # The decoded parts (one copy) and their templates; it was 3.7x with every text run kept.
    assert peak < 2.5 * size, f"prepare() allocated {peak:.1f} MB for a {size:.1f} MB message"

    copy, peak = traced_peak(lambda: personalize(
        prepared, signer=Signer([b"k" * 32]), base_url="https://t.example", https_policy="OPTIONAL",
        message_id="m", recipient_index=0, sent_at=1.0))
    assert b"https://t.example/c/" in copy
    # The copy itself and one part's text while it is encoded back.
    assert peak < 2.5 * size, f"personalize() allocated {peak:.1f} MB for a {size:.1f} MB message"

    sent, peak = traced_peak(lambda: sum(len(chunk) for chunk in data_chunks(copy)))
    assert sent > len(copy)
    # A few slices whatever the size: aiosmtplib's data() made three whole copies.
    assert peak < 8 * DATA_CHUNK / MB, f"DATA slices allocated {peak:.1f} MB for a {size:.1f} MB message"
