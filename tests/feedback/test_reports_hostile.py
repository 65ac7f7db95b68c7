# parse_report on hostile input: it never raises, and its work stays bounded (junk, huge and
# deeply nested messages, arbitrary and mutated bytes). Also the auto-reply rules and purity.
from __future__ import annotations

import ast
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import relay.feedback.reports as reports_module
from relay.feedback.reports import (
    MAX_RECIPIENTS,
    MAX_VALUE_CHARS,
    AutoReply,
    BounceReport,
    ComplaintReport,
    Unrecognised,
    parse_report,
)

CORPUS = Path(__file__).parent / "corpus"
CORPUS_FILES = sorted(CORPUS.glob("*.eml"))
KINDS = (BounceReport, ComplaintReport, AutoReply, Unrecognised)


def timed(data: bytes) -> tuple[object, float]:
    started = time.perf_counter()
    report = parse_report(data)
    return report, time.perf_counter() - started


def test_five_megabytes_of_junk_body() -> None:
    alphabet = b"abcdef <>@.:;=-\n\r\t\x00\xff\x80"
    table = bytes(alphabet[i % len(alphabet)] for i in range(256))
    junk = random.Random(5).randbytes(5 << 20).translate(table)
    report, seconds = timed(b"From: MAILER-DAEMON@example.org\nSubject: failure notice\n\n" + junk)
    assert isinstance(report, Unrecognised)
    assert seconds < 3


def test_ten_megabytes_of_random_bytes() -> None:
    report, seconds = timed(random.Random(10).randbytes(10 << 20))
    assert isinstance(report, Unrecognised)
    assert seconds < 3


def test_a_dsn_followed_by_megabytes_keeps_its_report() -> None:
    # The returned original may be huge: what matters comes first and is read.
    data = (CORPUS / "postfix-mailbox-full.eml").read_bytes().replace(
        b"Your invoice is attached", b"x" * (8 << 20))
    report, seconds = timed(data)
    assert isinstance(report, BounceReport) and report.recipients[0].status == "5.2.2"
    assert seconds < 3


def test_a_thousand_nested_multiparts() -> None:
    nested = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i) for i in range(1000))
    report, seconds = timed(b"From: a@example.org\n" + nested + b"\nhello\n")
    assert report == Unrecognised(reason="neither a bounce, a complaint nor an auto-reply")
    assert seconds < 3


def test_a_dsn_under_a_thousand_nested_messages_is_still_read() -> None:
    dsn = (b"Content-Type: multipart/report; report-type=delivery-status; boundary=z\n\n--z\n"
           b"Content-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.org\n\n"
           b"Final-Recipient: rfc822; a@example.org\nAction: failed\nStatus: 5.1.1\n\n--z\n")
    report, seconds = timed(dsn + b"Content-Type: message/rfc822\n\n" * 1000 + b"x\n--z--\n")
    assert isinstance(report, BounceReport)
    assert [(r.address, r.status) for r in report.recipients] == [("a@example.org", "5.1.1")]
    assert seconds < 3


def test_two_hundred_thousand_empty_parts() -> None:
    report, seconds = timed(b"Content-Type: multipart/mixed; boundary=b\n\n" + b"--b\n\n" * 200_000)
    assert isinstance(report, Unrecognised)
    assert seconds < 3


def test_header_values_and_recipient_count_are_capped() -> None:
    blocks = b"".join(b"Final-Recipient: rfc822; r%d@example.org\nAction: failed\nStatus: 5.1.1\n\n" % i
                      for i in range(MAX_RECIPIENTS + 50))
    data = (b"Content-Type: multipart/report; report-type=delivery-status; boundary=z\n\n--z\n"
            b"Content-Type: message/delivery-status\n\nReporting-MTA: dns; " + b"m" * 100_000 + b"\n\n"
            + blocks + b"--z--\n")
    report = parse_report(data)
    assert isinstance(report, BounceReport)
    assert len(report.recipients) == MAX_RECIPIENTS
    assert report.reporting_mta is not None and len(report.reporting_mta) == MAX_VALUE_CHARS


@pytest.mark.parametrize("data", [b"", b"\r\n\r\n", b"\x00", b"From x\n", b"--\n--\n", b":\n\n"])
def test_degenerate_inputs(data: bytes) -> None:
    assert isinstance(parse_report(data), Unrecognised)


def test_not_bytes_is_unrecognised() -> None:
    assert parse_report("text, not bytes") == Unrecognised(reason="not bytes")  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4000))
def test_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    assert isinstance(parse_report(data), KINDS)


@st.composite
def mutated_corpus_file(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(CORPUS_FILES)).read_bytes())
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "duplicate"]))
        if op == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.sampled_from([b"\n", b"\r\n\r\n", b"--", b":", b";", b"\x00", b"\xff",
                                                b"Content-Type: multipart/mixed; boundary=x\n\n--x\n",
                                                b"Content-Type: message/rfc822\n\n", b"=?utf-8?b?", b"<"]))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 200))]
        elif op == "truncate":
            del data[at:]
        elif op == "duplicate":
            data[at:at] = data[at:at + draw(st.integers(1, 500))]
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_corpus_file())
def test_never_raises_on_mutated_corpus_files(data: bytes) -> None:
    report = parse_report(data)
    assert isinstance(report, KINDS)
    if isinstance(report, BounceReport):
        assert all(r.address for r in report.recipients)
        assert report.arrival_date is None or report.arrival_date.utcoffset() is not None


# -- auto-replies (RFC 3834) -------------------------------------------------------------------

def message(*headers: str, body: str = "I am away until Monday.\n") -> bytes:
    return ("From: Jane <jane@example.org>\nTo: b-u2flug27skyvte7mdmds5pibqvf4alolwcgiogcyca34e7yvvhfwtjip@bounces.example.com\n" + "".join(h + "\n" for h in headers)
            + "\n" + body).encode()


@pytest.mark.parametrize(("headers", "reason"), [
    (("Subject: Re: hello", "Auto-Submitted: auto-replied"), "Auto-Submitted: auto-replied"),
    (("Subject: Re: hello", "Auto-Submitted: auto-generated"), "Auto-Submitted: auto-generated"),
    (("Subject: Re: hello", "Auto-Submitted: Auto-Notified (x)"), "Auto-Submitted: auto-notified"),
    (("Subject: Re: hello", "X-Autoreply: yes"), "x-autoreply header"),
    (("Subject: Re: hello", "X-Autorespond: Thanks"), "x-autorespond header"),
    (("Subject: Re: hello", "Precedence: auto_reply"), "Precedence: auto_reply"),
    (("Subject: Automatic reply: Your order",), "vacation subject"),
    (("Subject: Out of Office: Your order",), "vacation subject"),
    (("Subject: =?utf-8?q?R=C3=A9ponse_automatique_=3A_commande?=",), "vacation subject"),
    (("Subject: Abwesenheitsnotiz: Ihre Bestellung",), "vacation subject"),
])
def test_auto_replies(headers: tuple[str, ...], reason: str) -> None:
    assert parse_report(message(*headers)) == AutoReply(reason=reason)


@pytest.mark.parametrize("headers", [
    ("Subject: Re: hello", "Auto-Submitted: no"),  # RFC 3834 §5: "no" means a human sent it
    ("Subject: Re: hello", "Precedence: bulk"),
    ("Subject: Re: out of office party",),  # only a subject that starts so
])
def test_not_auto_replies(headers: tuple[str, ...]) -> None:
    assert isinstance(parse_report(message(*headers)), Unrecognised)


def test_a_dsn_with_auto_submitted_is_a_bounce_not_an_auto_reply() -> None:
    data = (CORPUS / "postfix-user-unknown.eml").read_bytes()
    assert b"Auto-Submitted: auto-replied" in data
    assert isinstance(parse_report(data), BounceReport)


# -- purity --------------------------------------------------------------------------------------

def test_feedback_parsing_is_pure() -> None:
    # STYLE.md: pure cores import no I/O framework, no logging, no clock. The package's
    # one I/O shell is the listener (SMTP, storage).
    forbidden = {"asyncio", "aiohttp", "aiosmtpd", "aiosqlite", "aiosmtplib", "logging", "socket",
                 "sqlite3", "time", "os"}
    for path in Path(reports_module.__file__).parent.glob("*.py"):
        if path.name == "listener.py":
            continue
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
        assert not imported & forbidden, path.name


def test_importing_pulls_in_no_io_framework() -> None:
    # A fresh interpreter: pytest-asyncio has already imported asyncio in this one.
    code = ("import sys, relay.feedback.reports, relay.feedback.classify\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in"
            " {'asyncio', 'aiohttp', 'aiosmtpd', 'aiosqlite', 'aiosmtplib', 'sqlite3'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
                            cwd=Path(reports_module.__file__).parent.parent.parent)
    assert result.stdout.strip() == "[]"


# -- logging ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("level", "lines"), [("info", 0), ("debug", 1)])
def test_flufl_bounce_detector_lines_only_at_debug(level: str, lines: int) -> None:
    import io
    import logging

    from relay.logs import configure

    # configure() sets up the process's root logger: everything it changes is put back.
    root, flufl, smtp_log = logging.getLogger(), logging.getLogger("flufl.bounce"), logging.getLogger("mail.log")
    saved = (list(root.handlers), root.level, flufl.level, smtp_log.level, logging.getLogger("aiosqlite").level,
             list(smtp_log.filters))
    stream = io.StringIO()
    try:
        configure(level=level, log_format="text", stream=stream)
        assert isinstance(parse_report((CORPUS / "qmail.eml").read_bytes()), BounceReport)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        flufl.setLevel(saved[2])
        smtp_log.setLevel(saved[3])
        logging.getLogger("aiosqlite").setLevel(saved[4])
        smtp_log.filters[:] = saved[5]
    assert min(stream.getvalue().count("flufl.bounce: Running detector"), 1) == lines


def test_an_empty_address_from_a_detector_is_dropped() -> None:
    # Found by the property test: a report cut inside X-Failed-Recipients made flufl.bounce's
    # Exim detector return b"" as an address.
    data = (b"Return-Path: <>\nFrom: Mail Delivery Subsystem <mailer-daemon@googlemail.com>\n"
            b"X-Failed-Recipients: gone@")
    assert parse_report(data) == Unrecognised(reason="neither a bounce, a complaint nor an auto-reply")


def test_a_plain_bounce_from_an_8bit_from_header_is_still_recognised() -> None:
    # flufl.bounce's Sina detector calls .lower() on From:, a Header object when the field holds
    # 8-bit bytes; its failure would stop the scan before the qmail detector runs.
    data = (b"Return-Path: <>\nFrom: MAILER-DAEMON <mailer-daemon@exampl\xe9.example>\nSubject: failure notice\n\n"
            b"Hi. This is the qmail-send program at mx.example.net.\nI'm afraid I wasn't able to deliver.\n\n"
            b"<nobody@example.net>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n"
            b"--- Below this line is a copy of the message.\n")
    r = parse_report(data)
    assert isinstance(r, BounceReport)
    assert [(x.address, x.status) for x in r.recipients] == [("nobody@example.net", "5.1.1")]
