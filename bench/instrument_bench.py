# Benchmark for relay.instrument: prepare() once, render()/personalize() per recipient,
# on a generated ~100 KB quoted-printable HTML newsletter with 40 links (plus its text
# part), beside the time the stdlib takes just to parse the same message.
# Run: .venv/bin/python bench/instrument_bench.py
from __future__ import annotations

import email
import time
from collections.abc import Callable
from email.policy import compat32

from relay.instrument import TrackingOptions, personalize, prepare
from relay.instrument.mime import encode_quoted_printable
from relay.tokens import Signer


def newsletter(target_bytes: int = 100_000, links: int = 40) -> bytes:
    def row(i: int, link: bool) -> str:
        anchor = (
            f'<a href="https://news.example.com/articles/{i}?utm_source=newsletter&amp;utm_medium=email&amp;'
            f'utm_campaign=weekly" ses:tags="article:a{i};" style="color:#d62828;">Read more</a>'
            if link
            else ""
        )
        return (
            f'<tr><td class="item" style="padding:12px 24px;font-family:Arial,sans-serif;font-size:15px;'
            f'line-height:22px;color:#333333;"><h2 style="margin:0 0 8px 0;">Item {i}: caf\u00e9 news</h2>\n'
            f'<p style="margin:0;">{"Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 3}</p>'
            f"{anchor}</td></tr>\n"
        )

    rows = target_bytes // len(row(0, False))
    every = max(rows // links, 1)
    body = "".join(row(i, i % every == 0 and i // every < links) for i in range(rows))
    html = (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head><body>\n<table>\n{body}</table>\n</body></html>\n'
    )
    html = html.replace("\n", "\r\n")
    text = "\r\n".join(f"Item {i}: https://news.example.com/articles/{i}" for i in range(0, links * every, every))
    return (
        b"From: news@example.com\r\nTo: reader@example.org\r\nSubject: Weekly\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/alternative; boundary="b"\r\n\r\n--b\r\n'
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        + encode_quoted_printable(text.encode() + b"\r\n", b"\r\n")
        + b"\r\n--b\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        + encode_quoted_printable(html.encode(), b"\r\n")
        + b"\r\n--b--\r\n"
    )


def best(function: Callable[[], object], repeat: int) -> float:
    """Best of `repeat` runs, in seconds (least disturbed by the rest of the machine)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    raw = newsletter()
    options = TrackingOptions(open=True, click=True)
    prepared = prepare(raw, options)
    assert prepared.failure is None
    signer = Signer([b"benchmark-secret-0123456789abcdef"])
    urls = [f"https://t.example.net/c/{'x' * 120}{i}" for i in range(len(prepared.links))]

    baseline = best(lambda: email.message_from_bytes(raw, policy=compat32), 20)
    prepare_time = best(lambda: prepare(raw, options), 20)
    render_time = best(lambda: prepared.render("https://t.example.net/o/" + "y" * 100, urls), 50)
    personalize_time = best(
        lambda: personalize(
            prepared,
            signer=signer,
            base_url="https://t.example.net",
            https_policy="REQUIRE",
            message_id="0102018f3b2a4c1d-5d2e7c41-9a0b-4c3d-8e1f-2a3b4c5d6e7f-000000",
            recipient_index=0,
            sent_at=1714684578.845,
        ),
        50,
    )
    print(f"message: {len(raw) / 1024:.0f} KiB, {len(prepared.links)} tracked links ({raw.count(b'<a ')} in HTML)")
    print(f"email.message_from_bytes (baseline): {baseline * 1e3:8.2f} ms")
    print(f"prepare (once per message):          {prepare_time * 1e3:8.2f} ms")
    print(
        f"render (per recipient):              {render_time * 1e3:8.2f} ms"
        f"  = {render_time / prepare_time:.1%} of prepare"
    )
    print(
        f"personalize (render + {len(prepared.links) + 1} tokens):    {personalize_time * 1e3:8.2f} ms"
        f"  = {personalize_time / prepare_time:.1%} of prepare"
    )


if __name__ == "__main__":
    main()
