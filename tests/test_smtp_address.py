# Envelope addresses: what an upstream would refuse is refused at MAIL/RCPT with
# Postfix's replies (501 5.1.7 / 501 5.1.3), so nothing undeliverable is queued.
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.smtp import address
from tests.smtp_harness import running, session, spooled

BAD_SENDER = "501 5.1.7 Bad sender address syntax"
BAD_RECIPIENT = "501 5.1.3 Bad recipient address syntax"

LONG_LOCAL = "x" * 65
SRS = "SRS0=HHH=TT=" + "d" * 40 + ".example=" + "u" * 30  # > 64: VERP/SRS senders are this long

BAD = [
    "bad\x7fx@example.org",  # DEL
    '"a\tb"@example.org',  # a tab, quoted
    '"a\x01b"@example.org',  # C0, quoted (aiosmtpd drops the quotes)
    "a\x00b@example.org",  # NUL
    "a@exa\x1bmple.org",  # control character in the domain
    "a\udcffb@example.org",  # not UTF-8 (aiosmtpd's surrogateescape)
    "bob",  # no domain
    "a@" + "d" * 250 + ".org",  # domain over 255 octets, path over 256 (RFC 5321 §4.5.3.1)
]


@pytest.mark.parametrize("addr", BAD)
def test_refused_in_both_roles(addr: str) -> None:
    assert address.problem(addr, recipient=False)
    assert address.problem(addr, recipient=True)


@pytest.mark.parametrize("addr", ["bob@example.org", '"a b"@example.org', "j\u00fcrgen@example.org",
                                  "a@[192.0.2.1]", "x" * 64 + "@example.org"])
def test_accepted_in_both_roles(addr: str) -> None:
    assert address.problem(addr, recipient=False) is None
    assert address.problem(addr, recipient=True) is None


def test_null_sender_only_as_sender_and_long_local_part_only_as_sender() -> None:
    assert address.problem("<>", recipient=False) is None
    assert address.problem("<>", recipient=True)
    # RFC 5321 §4.5.3.1.1's 64 octets: recipients' servers enforce it; long SRS/VERP
    # return paths are common and accepted by Postfix, so a sender may be longer.
    assert address.problem(SRS + "@fwd.example", recipient=False) is None
    assert address.problem(LONG_LOCAL + "@example.org", recipient=True)


async def test_bad_recipients_refused_on_the_wire(tmp_path: Path) -> None:
    async with running(tmp_path) as app:
        c = await session(app.config.smtp.listen.port)
        async with c:
            assert (await c.cmd("MAIL FROM:<ana@example.com>")).startswith("250")
            for addr in BAD[:6] + [LONG_LOCAL + "@example.org"]:
                assert await c.cmd(f"RCPT TO:<{addr}>") == BAD_RECIPIENT, repr(addr)
            assert (await c.cmd("RCPT TO:<bob@example.org>")).startswith("250")
            assert (await c.cmd("DATA")).startswith("354")
            assert (await c.cmd("Subject: x\r\n\r\nhi\r\n.")).startswith("250")
        assert len(spooled(app)) == 1


async def test_bad_senders_refused_on_the_wire(tmp_path: Path) -> None:
    async with running(tmp_path) as app:
        c = await session(app.config.smtp.listen.port)
        async with c:
            for addr in BAD[:6]:
                assert await c.cmd(f"MAIL FROM:<{addr}>") == BAD_SENDER, repr(addr)
            assert await c.cmd("RCPT TO:<bob@example.org>") == "503 Error: need MAIL command"
            assert (await c.cmd(f"MAIL FROM:<{SRS}@fwd.example>")).startswith("250")
            assert (await c.cmd("RSET")).startswith("250")
            assert (await c.cmd("MAIL FROM:<>")).startswith("250")


# The fast path for "<local@domain> params" must give what aiosmtpd's full parser
# gives, or step aside: compared on generated arguments, odd ones included.
_PIECES = ["a", "b.c", "x-y", "Z9", "o'k", "+tag", ".", "..", "@", "<", ">", " ", "  ", "(c)", '"q"', "\t",
           "é", "[1.2.3.4]", "SIZE=5000", "BODY=8BITMIME", "=", ":", ",", "\\", "\r"]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=12).map("".join),
       st.sampled_from(["<{}>", "<{}> SIZE=1", "{}", "<{}>  x", "<{}> (c) y", " <{}>", "<{}>x", "<{}> ", "<{}> a "]))
def test_simple_path_agrees_with_aiosmtpd(text: str, shape: str) -> None:
    from aiosmtpd.smtp import SMTP
    arg = shape.format(text)
    fast = address.simple_path(arg)
    if fast is not None:  # (the full parser itself raises on some odd arguments, e.g. "<")
        assert fast == SMTP._getaddr(_ParserOnly(), arg), arg


def test_simple_path_takes_the_common_forms() -> None:
    assert address.simple_path("<a.b+c@example.org> SIZE=5000 BODY=8BITMIME") == (
        "a.b+c@example.org", "SIZE=5000 BODY=8BITMIME")
    assert address.simple_path("<bounce-1@mail.example.com>") == ("bounce-1@mail.example.com", "")
    from aiosmtpd.smtp import SMTP
    for arg in ("<a.b+c@example.org> SIZE=5000 BODY=8BITMIME", "<x@y> a ", "<o'k@x-y.z9>", "<a@b.c> SIZE=1\t"):
        assert address.simple_path(arg) == SMTP._getaddr(_ParserOnly(), arg), arg
    for odd in ('<"a b"@x.org>', "<a@[127.0.0.1]>", "<@relay.example:a@b.org>", "<a..b@x.org>", "a@b.org",
                "<a@b.org>(comment)", "<>", "<é@x.org>"):
        assert address.simple_path(odd) is None, odd


class _ParserOnly:
    local_part_limit = 0
