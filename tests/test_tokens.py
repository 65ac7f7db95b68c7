from __future__ import annotations

import base64
import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.tokens import MAX_TOKEN_CHARS, ClickClaim, OpenClaim, Signer

SECRET = b"k" * 32
OPEN = OpenClaim("0102018f3b2a4c1d-5d2e7c41-9a0b-4c3d-8e1f-2a3b4c5d6e7f-000000", "ana@example.org", 1714684578.845)
CLICK = ClickClaim(
    OPEN.message_id,
    OPEN.recipient,
    OPEN.sent_at,
    "https://shop.example.com/p?a=1&b=2#top",
    {"product": ["book"], "genre": ["fiction", "poetry"]},
)
URL_SAFE = set(string.ascii_letters + string.digits + "-_")


def test_open_round_trip() -> None:
    signer = Signer([SECRET])
    token = signer.sign_open(OPEN)
    assert set(token) <= URL_SAFE
    assert signer.verify_open(token) == OPEN


def test_click_round_trip_with_and_without_tags() -> None:
    signer = Signer([SECRET])
    assert signer.verify_click(signer.sign_click(CLICK)) == CLICK
    untagged = ClickClaim("m", "r@x.test", 1.0, "http://x.test/", {})
    token = signer.sign_click(untagged)
    assert set(token) <= URL_SAFE
    assert signer.verify_click(token) == untagged


def test_non_ascii_and_integral_values_round_trip() -> None:
    signer = Signer([SECRET])
    claim = ClickClaim("id", "j\u00fcrgen@m\u00fcller.example", 1700000000.0, "https://x.test/\u00e9", {})
    assert signer.verify_click(signer.sign_click(claim)) == claim
    # surrogate-escaped bytes (as from a surrogateescape-decoded SMTP address) survive.
    odd = OpenClaim("id", "a\udcffb@x.test", 0.0)
    assert signer.verify_open(signer.sign_open(odd)) == odd


def test_token_is_short() -> None:
    signer = Signer([SECRET])
    # JSON payload + 16-byte MAC: an SES-style message id, an address and a time.
    assert len(signer.sign_open(OPEN)) < 160
    long_url = "https://shop.example.com/" + "category/shoes/" * 20
    claim = ClickClaim(OPEN.message_id, OPEN.recipient, OPEN.sent_at, long_url, {})
    token = signer.sign_click(claim)
    assert len(token) < len(long_url)  # deflated: repeated path segments compress
    assert signer.verify_click(token) == claim


def test_deterministic() -> None:
    assert Signer([SECRET]).sign_click(CLICK) == Signer([SECRET]).sign_click(CLICK)


@pytest.mark.parametrize("kind", ["open", "click"])
def test_tamper_any_character(kind: str) -> None:
    signer = Signer([SECRET])
    token = signer.sign_open(OPEN) if kind == "open" else signer.sign_click(CLICK)
    verify = signer.verify_open if kind == "open" else signer.verify_click
    for i, char in enumerate(token):
        for other in ("A", "B", "-", "_", "z"):
            if other != char:
                assert verify(token[:i] + other + token[i + 1 :]) is None, (i, other)
    assert verify(token[:-1]) is None
    assert verify(token + "A") is None
    assert verify(token + "AA") is None
    assert verify(token + "=") is None


def test_wrong_kind_is_rejected() -> None:
    signer = Signer([SECRET])
    assert signer.verify_click(signer.sign_open(OPEN)) is None
    assert signer.verify_open(signer.sign_click(CLICK)) is None


def test_wrong_secret_is_rejected() -> None:
    assert Signer([b"other"]).verify_open(Signer([SECRET]).sign_open(OPEN)) is None


def test_rotation() -> None:
    old = Signer([b"old-secret"])
    rotated = Signer([b"new-secret", b"old-secret"])
    old_token = old.sign_click(CLICK)
    assert rotated.verify_click(old_token) == CLICK  # old secret still verifies
    new_token = rotated.sign_click(CLICK)
    assert new_token != old_token  # the first secret signs
    assert Signer([b"new-secret"]).verify_click(new_token) == CLICK
    assert old.verify_click(new_token) is None


@pytest.mark.parametrize("secrets", [[], [b""], ["text-secret"]])
def test_bad_secrets(secrets: list[object]) -> None:
    with pytest.raises(ValueError):
        Signer(secrets)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "token",
    [
        "",
        "A",
        "AAAA",
        "====",
        "not a token",
        "abc.def",
        "\u00e9\u00e9\u00e9\u00e9",
        "A" * 40,
        "A" * (MAX_TOKEN_CHARS + 4),
        "_" * 100_000,
        base64.urlsafe_b64encode(b"\x01[1,2,3]" + b"\x00" * 16).decode().rstrip("="),
    ],
)
def test_garbage_is_rejected(token: str) -> None:
    signer = Signer([SECRET])
    assert signer.verify_open(token) is None
    assert signer.verify_click(token) is None


def test_non_string_is_rejected() -> None:
    signer = Signer([SECRET])
    assert signer.verify_open(None) is None  # type: ignore[arg-type]
    assert signer.verify_click(b"bytes") is None  # type: ignore[arg-type]


def test_well_signed_but_wrong_shape_is_rejected() -> None:
    # A payload signed with the right key but not a claim (defence in depth).
    signer = Signer([SECRET])
    bad: list[Any] = [
        ["a", "b"],
        ["a", "b", "c"],
        [1, "b", 2.0],
        ["a", "b", True],
        {"a": 1},
        ["a", "b", 1.0, "u", {"k": "v"}],
    ]
    for fields in bad:
        token = signer._sign(b"relay.token.v1/click\x00", fields)  # noqa: SLF001
        assert signer.verify_click(token) is None
        token = signer._sign(b"relay.token.v1/open\x00", fields)  # noqa: SLF001
        assert signer.verify_open(token) is None


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_never_raises(token: str) -> None:
    signer = Signer([SECRET])
    assert signer.verify_open(token) is None
    assert signer.verify_click(token) is None


@settings(max_examples=100, deadline=None)
@given(
    st.text(max_size=80),
    st.text(max_size=80),
    st.floats(allow_nan=False),
    st.text(max_size=300),
    st.dictionaries(st.text(max_size=10), st.lists(st.text(max_size=10), max_size=3), max_size=3),
)
def test_any_claim_round_trips(
    message_id: str, recipient: str, sent_at: float, url: str, tags: dict[str, list[str]]
) -> None:
    signer = Signer([SECRET, b"older"])
    claim = ClickClaim(message_id, recipient, sent_at, url, tags)
    token = signer.sign_click(claim)
    assert set(token) <= URL_SAFE
    assert signer.verify_click(token) == claim
    assert signer.verify_open(signer.sign_open(OpenClaim(message_id, recipient, sent_at))) == OpenClaim(
        message_id, recipient, sent_at
    )
