# Tracking tokens (pure): v2 round trips, no personal data, length, tampering of the
# token or of the URL beside it, the URL's path encoding, the v1 tokens already
# mailed, and click_link_fits as the exact bound of the format.
from __future__ import annotations

import base64
import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.tokens import (
    MAX_LINK_PATH,
    MAX_TOKEN_CHARS,
    ClickClaim,
    LegacyClickClaim,
    LegacyOpenClaim,
    OpenClaim,
    Signer,
    click_link_fits,
    decode_url,
    encode_url,
)

SECRET = b"k" * 32
MID = "0102018f3b2a4c1d-5d2e7c41-9a0b-4c3d-8e1f-2a3b4c5d6e7f-000000"
SENT = int(MID[:16], 16) / 1000  # relay ids hold the acceptance time in ms
OPEN = OpenClaim(MID, 2, SENT)
CLICK = ClickClaim(MID, 2, SENT, "https://shop.example.com/p?a=1&b=2#top",
                   {"product": ["book"], "genre": ["fiction", "poetry"]})
URL_SAFE = set(string.ascii_letters + string.digits + "-_")

# Produced by relay's v1 code (commit 7fff5d9) before this format existed, with this
# secret: links like these are in mailboxes and must keep working.
V1_SECRET = b"legacy-secret-0123456789abcdef"
V1_CLICK = ("AjWMQQuCMBhA_8t36OR0c845QQrCP1DdxMPcPjPSJm5SEP33Quhd3uXxGqCs6HmX6swwS38QYVOUJmNEadqRzHBLCmQ9STXvMiNsjrIndAMi"
            "0OPNYOzRLBgO-NLTPGLslitETCqhpCikimUewRDC7Msk-TfGTckTx59wv3pcqu20C-6Oj-pcH0_1haUcojfMi7OrCVA24AeHHtpP-wUX6nn07WGKJd"
            "fgXXPgH7kP")
V1_OPEN = ("Ah3BOw7DIAwA0LswxwjzM2y5R9XBGFNFImqVZOjxW-W9h3FYRmieo2B3f5C6V5KIUNk1iBI6FMUBnkOLknpWGuBuZjE8N1F7qhx6rfrl_TPVvo-"
           "XWZBqqpQKVUv5-QPMNxPegd2a3b1uU3dmZZ5s")
V1_MID = "018f3b2a4c1d0000-5d2e7c41-9a0b-4c3d-8e1f-2a3b4c5d6e7f-000000"
V1_URL = "https://example.com/welcome?user=alice&token=SECRET123"


def split(rest: str) -> tuple[str, str]:
    token, _, url = rest.partition("/")
    return token, url


def test_open_round_trip() -> None:
    signer = Signer([SECRET])
    token = signer.sign_open(OPEN)
    assert set(token) <= URL_SAFE
    assert signer.verify_open(token) == OPEN


def test_click_round_trip_with_and_without_tags() -> None:
    signer = Signer([SECRET])
    assert signer.verify_click(signer.sign_click(CLICK)) == CLICK
    untagged = ClickClaim("m", 0, 1.5, "http://x.test/", {})
    rest = signer.sign_click(untagged)
    assert set(split(rest)[0]) <= URL_SAFE
    assert signer.verify_click(rest) == untagged


def test_tokens_reveal_no_personal_data_and_stay_short() -> None:
    signer = Signer([SECRET])
    url = "https://example.com/welcome?user=alice&token=SECRET123"
    claim = ClickClaim(MID, 0, SENT, url, {})
    token, encoded = split(signer.sign_click(claim))
    blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert b"alice" not in blob and b"@" not in blob and b"example" not in blob  # an index, no address, no URL
    assert len(token) == 56  # 1 flags + 24 id + 1 index + 16 MAC bytes
    assert decode_url(encoded) == url
    # the whole path after base_url, /c/{token}/{url}: the URL's length + 60, + 2 per
    # encoded character ("https:/%2F", "%3F")
    assert len(f"/c/{token}/{encoded}") == len(url) + 60 + 4
    assert len(signer.sign_open(OpenClaim(MID, 0, SENT))) == 56
    for ordinary in ("https://shop.example.com/spring/sale/shoes?utm_source=email&utm_medium=x",
                     "https://www.example.org/", "http://example.com/a/b/c/d.html?x=1#section"):
        assert len(f"/c/{signer.sign_click(ClickClaim(MID, 3, SENT, ordinary, {}))}") <= len(ordinary) + 66


def test_sent_at_comes_from_the_id_or_is_spelled_out() -> None:
    signer = Signer([SECRET])
    # intake takes the id's ms and accepted_at from one clock reading: the token keeps the ms
    claim = signer.verify_open(signer.sign_open(OpenClaim(MID, 0, SENT + 0.0004)))
    assert isinstance(claim, OpenClaim) and claim.sent_at == SENT
    other = signer.verify_open(signer.sign_open(OpenClaim(MID, 0, 1700000000.25)))
    assert isinstance(other, OpenClaim) and other.sent_at == 1700000000.25
    assert len(signer.sign_open(OpenClaim(MID, 0, 1700000000.25))) == 64  # 6 more bytes


def test_other_message_ids_fall_back_to_text() -> None:
    signer = Signer([SECRET])
    for mid in ("m", "0102018F3B2A4C1D-5D2E7C41-9A0B-4C3D-8E1F-2A3B4C5D6E7F-000000", MID + "x",
                "j\u00fcrgen-\udcff"):
        claim = OpenClaim(mid, 5, 12.5)
        assert signer.verify_open(signer.sign_open(claim)) == claim


@pytest.mark.parametrize("index", [-1, 1 << 21, True, 1.0])
def test_bad_recipient_index_is_a_caller_bug(index: Any) -> None:
    with pytest.raises(ValueError):
        Signer([SECRET]).sign_open(OpenClaim(MID, index, SENT))


@pytest.mark.parametrize("sent_at", [-1.0, float("inf"), float("nan"), 1e15])
def test_bad_sent_at_is_a_caller_bug(sent_at: float) -> None:
    with pytest.raises(ValueError):
        Signer([SECRET]).sign_open(OpenClaim("m", 0, sent_at))


def test_deterministic() -> None:
    assert Signer([SECRET]).sign_click(CLICK) == Signer([SECRET]).sign_click(CLICK)


@pytest.mark.parametrize("kind", ["open", "click"])
def test_tamper_any_character_of_the_token(kind: str) -> None:
    signer = Signer([SECRET])
    if kind == "open":
        token, tail = signer.sign_open(OPEN), ""
        verify: Any = signer.verify_open
    else:
        token, url = split(signer.sign_click(CLICK))
        tail = "/" + url
        verify = signer.verify_click
    assert verify(token + tail) is not None
    for i, char in enumerate(token):
        for other in ("A", "B", "-", "_", "z"):
            if other != char:
                assert verify(token[:i] + other + token[i + 1 :] + tail) is None, (i, other)
    for bad in (token[:-1], token + "A", token + "AA", token + "="):
        assert verify(bad + tail) is None


def test_the_url_is_signed_too() -> None:
    signer = Signer([SECRET])
    token, url = split(signer.sign_click(CLICK))
    for other in ("https://evil.example/", url[:-1], url + "x", "", url.replace("%3F", "/")):
        assert signer.verify_click(f"{token}/{other}") is None
    assert signer.verify_click(token) is None  # no URL part at all
    # any equivalent percent-encoding verifies: only the decoded URL is signed
    assert signer.verify_click(f"{token}/{url.replace(':', '%3A').replace('=', '%3d')}") == CLICK


def test_wrong_kind_is_rejected() -> None:
    signer = Signer([SECRET])
    open_token = signer.sign_open(OPEN)
    assert signer.verify_click(open_token + "/" + encode_url(CLICK.url)) is None
    assert signer.verify_open(split(signer.sign_click(CLICK))[0]) is None


def test_wrong_secret_is_rejected() -> None:
    assert Signer([b"other"]).verify_open(Signer([SECRET]).sign_open(OPEN)) is None


def test_rotation() -> None:
    old = Signer([b"old-secret"])
    rotated = Signer([b"new-secret", b"old-secret"])
    old_link = old.sign_click(CLICK)
    assert rotated.verify_click(old_link) == CLICK  # old secret still verifies
    new_link = rotated.sign_click(CLICK)
    assert new_link != old_link  # the first secret signs
    assert Signer([b"new-secret"]).verify_click(new_link) == CLICK
    assert old.verify_click(new_link) is None


def test_v1_tokens_already_mailed_still_verify() -> None:
    signer = Signer([b"a-newer-secret-0123456789", V1_SECRET])
    click = signer.verify_legacy_click(V1_CLICK)
    assert click == LegacyClickClaim(V1_MID, "alice.secret@example.org", 1795975879.76, V1_URL, {"product": ["shoes"]})
    assert signer.verify_open(V1_OPEN) == LegacyOpenClaim(V1_MID, "alice.secret@example.org", 1795975879.76)
    # the old shapes only: a v1 token is no v2 link, and a v2 token no v1 one
    assert signer.verify_click(f"{V1_CLICK}/{encode_url(V1_URL)}") is None
    assert signer.verify_legacy_click(split(signer.sign_click(CLICK))[0]) is None
    assert signer.verify_legacy_click(V1_OPEN) is None and signer.verify_open(V1_CLICK) is None
    assert Signer([SECRET]).verify_legacy_click(V1_CLICK) is None
    flipped = V1_CLICK[:-3] + ("A" if V1_CLICK[-3] != "A" else "B") + V1_CLICK[-2:]
    assert signer.verify_legacy_click(flipped) is None


@pytest.mark.parametrize("secrets", [[], [b""], ["text-secret"]])
def test_bad_secrets(secrets: list[object]) -> None:
    with pytest.raises(ValueError):
        Signer(secrets)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "token",
    [
        "", "A", "AAAA", "====", "not a token", "abc.def", "\u00e9\u00e9\u00e9\u00e9", "A" * 40, "gA", "gAAA",
        "A" * (MAX_TOKEN_CHARS + 4), "_" * 100_000,
        base64.urlsafe_b64encode(b"\x01[1,2,3]" + b"\x00" * 16).decode().rstrip("="),
        base64.urlsafe_b64encode(b"\x81" + b"\x00" * 40).decode().rstrip("="),
    ],
)
def test_garbage_is_rejected(token: str) -> None:
    signer = Signer([SECRET])
    assert signer.verify_open(token) is None
    assert signer.verify_click(token + "/https:/%2Fx.test/") is None
    assert signer.verify_legacy_click(token) is None


def test_non_string_is_rejected() -> None:
    signer = Signer([SECRET])
    assert signer.verify_open(None) is None
    assert signer.verify_click(b"bytes") is None
    assert signer.verify_legacy_click(7) is None


def test_well_signed_but_malformed_bodies_are_rejected() -> None:
    # Bodies signed with the right key that are no valid claim (defence in depth).
    signer = Signer([SECRET])
    good = _body_of(signer.sign_open(OpenClaim("m", 1, 2.0)))  # text id, explicit sent_at
    bad = [
        b"\x80",  # nothing after the flags
        b"\x88" + good[1:],  # an unknown flag bit
        b"\x80" + good[1:],  # a text id without sent_at
        good + b"\x00",  # trailing bytes
        good[:-1],  # truncated
        b"\x82\x01m\x81\x00" + good[-6:],  # an over-long varint (index 1 as two bytes)
        b"\x82\x02\xff\xfe\x01" + good[-6:],  # an id that is not UTF-8
        b"\x86" + good[1:] + b"\x00",  # the tags flag with no tags
    ]
    for body in bad:
        token = _sign(body, b"relay.token.v2/open\x00")
        assert signer.verify_open(token) is None, body
    assert signer.verify_open(_sign(good, b"relay.token.v2/open\x00")) == OpenClaim("m", 1, 2.0)


def _body_of(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))[:-16]


def _sign(body: bytes, namespace: bytes) -> str:
    import hashlib
    import hmac
    mac = hmac.new(SECRET, namespace + body, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(body + mac).decode().rstrip("=")


@pytest.mark.parametrize(
    ("url", "encoded"),
    [
        ("https://example.com/welcome?user=alice&token=SECRET123",
         "https:/%2Fexample.com/welcome%3Fuser=alice&token=SECRET123"),
        ("https://x.test/a b/%41?q=\u00e9#frag", "https:/%2Fx.test/a%20b/%2541%3Fq=%C3%A9%23frag"),
        ("https://x.test/a/./b/../c//d", "https:/%2Fx.test/a%2F./b%2F../c/%2Fd"),  # no dot segments, no //
        ("https://x.test/.../.well-known/", "https:/%2Fx.test/.../.well-known/"),
        ("https://x.test/p;jsessionid=1", "https:/%2Fx.test/p%3Bjsessionid=1"),
        ("https://x.test/\\\t<>\"{}|^`", "https:/%2Fx.test/%5C%09%3C%3E%22%7B%7D%7C%5E%60"),
        ("https://x.test/it's", "https:/%2Fx.test/it%27s"),
        ("https://x.test/wiki/Foo_(bar)", "https:/%2Fx.test/wiki/Foo_(bar%29"),  # linkifiers drop a last ")"
        ("https://x.test/a.", "https:/%2Fx.test/a%2E"),
        ("https://x.test/a/", "https:/%2Fx.test/a/"),
    ],
)
def test_url_path_encoding(url: str, encoded: str) -> None:
    assert encode_url(url) == encoded
    assert decode_url(encoded) == url


def _longest_fitting(tags: dict[str, list[str]]) -> str:
    lo, hi = 10, MAX_LINK_PATH
    while lo < hi:  # bounded: a binary search over at most 8000 lengths
        mid = (lo + hi + 1) // 2
        if click_link_fits("https://example.com/" + "a" * mid, tags):
            lo = mid
        else:
            hi = mid - 1
    return "https://example.com/" + "a" * lo


@pytest.mark.parametrize("tags", [{}, {"product": ["shoes"], "slot": ["hero", "top"]}])
def test_click_link_fits_is_the_exact_bound(tags: dict[str, list[str]]) -> None:
    signer = Signer([SECRET])
    url = _longest_fitting(tags)
    # the worst claim of a relay message id (largest index, explicit sent_at) is exactly at the bound
    worst = f"/c/{signer.sign_click(ClickClaim(MID, (1 << 21) - 1, 1.0, url, tags))}"
    assert len(worst) in (MAX_LINK_PATH, MAX_LINK_PATH - 1)  # base64 grows in steps of 4/3
    assert len(f"/c/{signer.sign_click(ClickClaim(MID, 0, SENT, url, tags))}") <= MAX_LINK_PATH
    assert not click_link_fits(url + "a", tags)
    # characters that are percent-encoded count three times
    assert not click_link_fits(url[:-1] + " ", tags)


def test_a_9028_character_url_does_not_fit() -> None:
    assert not click_link_fits("https://example.com/?q=" + "x" * 9005, {})
    assert click_link_fits("https://example.com/?q=" + "x" * 7000, {})


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_never_raises(token: str) -> None:
    signer = Signer([SECRET])
    assert signer.verify_open(token) is None
    assert signer.verify_click(token) is None
    assert signer.verify_legacy_click(token) is None


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_url_encodes_to_a_safe_path_and_back(url: str) -> None:
    encoded = encode_url(url)
    assert decode_url(encoded) == url
    assert "//" not in "/" + encoded and "?" not in encoded and "#" not in encoded
    assert all(0x21 <= ord(c) < 0x7F for c in encoded)
    assert not encoded or encoded[-1].isalnum() or encoded[-1] == "/"
    segments = ("/" + encoded).split("/")[1:]
    assert not any(s in (".", "..") for s in segments[1:])  # the first is the URL's own start


@settings(max_examples=100, deadline=None)
@given(
    st.text(max_size=80),
    st.integers(min_value=0, max_value=(1 << 21) - 1),
    st.integers(min_value=0, max_value=(1 << 48) - 1),
    st.text(max_size=300),
    st.dictionaries(st.text(max_size=10), st.lists(st.text(max_size=10), max_size=3), max_size=3),
)
def test_any_claim_round_trips(message_id: str, index: int, sent_ms: int, url: str, tags: dict[str, list[str]]) -> None:
    signer = Signer([SECRET, b"older"])
    claim = ClickClaim(message_id, index, sent_ms / 1000, url, tags)
    rest = signer.sign_click(claim)
    assert set(split(rest)[0]) <= URL_SAFE
    assert signer.verify_click(rest) == claim
    assert signer.verify_open(signer.sign_open(OpenClaim(message_id, index, sent_ms / 1000))) == OpenClaim(
        message_id, index, sent_ms / 1000
    )


def test_only_the_canonical_encoding_verifies() -> None:
    """The last character's spare bits must be zero: a token whose last character differs
    only there decodes to the same bytes, and must not verify."""
    signer = Signer([b"k" * 32])
    lengths = set()
    for n in range(1, 5):
        token = signer.sign_open(OpenClaim("x" * n, 1, 1_700_000_000.5))
        lengths.add(len(token) % 4)
        last = token[-1]
        for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_":
            assert (signer.verify_open(token[:-1] + c) is not None) == (c == last), (token, c)
    assert lengths >= {0, 2, 3}


def test_fast_and_general_claim_parsing_agree() -> None:
    """Relay ids with a one-byte index take a shortcut; the rest the general reader."""
    signer = Signer([b"k" * 32])
    mid = "0000018c1a2b3c4d-12345678-1234-1234-1234-123456789abc-000000"
    sent = int(mid[:16], 16) / 1000
    for index in (0, 1, 127, 128, 300, (1 << 21) - 1):
        for at in (sent, sent + 5):
            claim = OpenClaim(mid, index, at)
            assert signer.verify_open(signer.sign_open(claim)) == claim
            click = ClickClaim(mid, index, at, "https://example.com/a", {})
            assert signer.verify_click(signer.sign_click(click)) == click


# --- unsubscribe tokens ---------------------------------------------------------------

def test_unsubscribe_token_round_trip_and_namespace() -> None:
    from relay.tokens import OpenClaim, Signer, UnsubscribeClaim

    signer = Signer([b"k1"])
    mid = "0000018f3b2a4c1d-5d2e7c41-9a0b-4c3d-8e1f-2a3b4c5d6e7f-000000"
    claim = UnsubscribeClaim(message_id=mid, recipient_index=3, sent_at=int(mid[:16], 16) / 1000,
                             contact_list="news", topic="weekly")
    token = signer.sign_unsubscribe(claim)
    assert signer.verify_unsubscribe(token) == claim
    no_topic = UnsubscribeClaim(mid, 0, claim.sent_at, "news", None)
    assert signer.verify_unsubscribe(signer.sign_unsubscribe(no_topic)) == no_topic
    assert "news" not in token  # nothing readable in the link
    # Another kind's token, another key, a changed character: nothing.
    assert signer.verify_unsubscribe(signer.sign_open(OpenClaim(mid, 3, claim.sent_at))) is None
    assert signer.verify_open(token) is None
    assert Signer([b"k2"]).verify_unsubscribe(token) is None
    flipped = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
    assert signer.verify_unsubscribe(flipped) is None
    assert Signer([b"k2", b"k1"]).verify_unsubscribe(token) == claim  # key rotation
