from __future__ import annotations

import email
import html
import pathlib
import re
from email.policy import compat32

import pytest

from relay.instrument import Prepared, TrackingOptions, personalize, prepare
from relay.tokens import OpenClaim, Signer

CORPUS = pathlib.Path(__file__).parent / "corpus"
BOTH = TrackingOptions(open=True, click=True)
SIGNER = Signer([b"0123456789abcdef0123456789abcdef"])
# A click link ends with the encoded destination, never with punctuation (as a mail
# client's linkifier reads it).
TRACKING_RE = re.compile(rb"(https?)://t\.example\.net/(o|c)/([A-Za-z0-9_-]+(?:/[^\s\"'<>]*[A-Za-z0-9/])?)")
RECIPIENTS = ("ana@example.org", "bob@example.org", "a@x.test")


def copy_for(
    prepared: Prepared, recipient: str, policy: str = "OPTIONAL", base: str = "https://t.example.net"
) -> bytes:
    return personalize(
        prepared,
        signer=SIGNER,
        base_url=base,
        https_policy=policy,
        message_id="0102018f3b2a4c1d-5d2e7c41-9a0b-4c3d-8e1f-2a3b4c5d6e7f-000000",
        recipient_index=RECIPIENTS.index(recipient),
        sent_at=1714684578.845,
    )


def tracking_urls(out: bytes) -> list[tuple[str, str, str]]:
    """(scheme, kind, token) of every tracking URL, in order, from the decoded message."""
    found = []
    for part in email.message_from_bytes(out, policy=compat32).walk():
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            found += [(s.decode(), k.decode(), t.decode()) for s, k, t in TRACKING_RE.findall(payload)]
    return found


def test_each_recipient_gets_unique_urls_that_verify_back() -> None:
    prepared = prepare((CORPUS / "newsletter.eml").read_bytes(), BOTH)
    ana, bob = copy_for(prepared, "ana@example.org"), copy_for(prepared, "bob@example.org")
    ana_urls, bob_urls = tracking_urls(ana), tracking_urls(bob)
    assert len(ana_urls) == len(bob_urls) == len(prepared.links) + 1
    assert not {token for _, _, token in ana_urls} & {token for _, _, token in bob_urls}
    for urls, recipient in ((ana_urls, "ana@example.org"), (bob_urls, "bob@example.org")):
        clicks = [token for _, kind, token in urls if kind == "c"]
        opens = [token for _, kind, token in urls if kind == "o"]
        assert len(opens) == 1
        claim = SIGNER.verify_open(opens[0])
        assert isinstance(claim, OpenClaim) and claim.recipient_index == RECIPIENTS.index(recipient)
        assert claim.sent_at == 1714684578.845
        # the text part comes first in the walk, so tokens appear in links order
        for token, link in zip(clicks, prepared.links, strict=True):
            click = SIGNER.verify_click(html.unescape(token))
            assert click is not None
            assert (click.url, click.link_tags, click.recipient_index) == (link.url, link.tags, RECIPIENTS.index(recipient))
            assert click.message_id == "0102018f3b2a4c1d-5d2e7c41-9a0b-4c3d-8e1f-2a3b4c5d6e7f-000000"


def test_personalize_is_deterministic() -> None:
    prepared = prepare((CORPUS / "iso-2022-jp.eml").read_bytes(), BOTH)
    assert copy_for(prepared, "a@x.test") == copy_for(prepared, "a@x.test")


@pytest.mark.parametrize(
    ("base", "policy", "pixel", "http_link", "https_link"),
    [
        ("https://t.example.net", "REQUIRE", "https", "https", "https"),
        ("http://t.example.net", "REQUIRE", "https", "https", "https"),
        ("http://t.example.net", "REQUIRE_OPEN_ONLY", "https", "http", "https"),
        ("https://t.example.net/", "REQUIRE_OPEN_ONLY", "https", "http", "https"),
        ("http://t.example.net/", "OPTIONAL", "http", "http", "http"),
        ("https://t.example.net", "OPTIONAL", "https", "https", "https"),
    ],
)
def test_https_policy(base: str, policy: str, pixel: str, http_link: str, https_link: str) -> None:
    raw = b'Content-Type: text/html\r\n\r\n<a href="http://plain.test/">a</a><a href="HTTPS://secure.test/">b</a>'
    out = copy_for(prepare(raw, BOTH), "a@x.test", policy, base)
    assert b"t.example.net//" not in out  # a trailing slash on base_url is dropped
    assert [(scheme, kind) for scheme, kind, _ in tracking_urls(out)] == [
        (http_link, "c"),
        (https_link, "c"),
        (pixel, "o"),
    ]


def test_text_only_message_has_no_open_token() -> None:
    out = copy_for(prepare((CORPUS / "text-only.eml").read_bytes(), BOTH), "a@x.test")
    kinds = [kind for _, kind, _ in tracking_urls(out)]
    assert kinds == ["c"] * 5


def test_failed_or_plain_messages_are_returned_unchanged() -> None:
    broken = (CORPUS / "broken-base64.eml").read_bytes()
    assert copy_for(prepare(broken, BOTH), "a@x.test") == broken
    signed = (CORPUS / "smime-signed.eml").read_bytes()
    assert copy_for(prepare(signed, BOTH), "a@x.test") == signed


@pytest.mark.parametrize(
    ("base", "policy"),
    [
        ("https://t.example.net", "require"),
        ("https://t.example.net", ""),
        ("t.example.net", "OPTIONAL"),
        ("https://", "OPTIONAL"),
    ],
)
def test_bad_configuration_raises(base: str, policy: str) -> None:
    with pytest.raises(ValueError):
        copy_for(prepare(b"Content-Type: text/html\r\n\r\nhi", BOTH), "a@x.test", policy, base)


def test_render_rejects_a_wrong_number_of_urls() -> None:
    prepared = prepare(b'Content-Type: text/html\r\n\r\n<a href="https://x.test/">x</a>', BOTH)
    with pytest.raises(ValueError):
        prepared.render(None, [])


def test_non_ascii_tracking_urls_are_percent_encoded() -> None:
    raw = b'Content-Type: text/html; charset=iso-8859-1\r\n\r\n<a href="https://x.test/">x</a>'
    out = prepare(raw, BOTH).render("https://t.test/o/\u00e9 x", ['https://t.test/c/"&\u00e9'])
    assert b'<a href="https://t.test/c/&quot;&amp;%C3%A9">x</a><img src="https://t.test/o/%C3%A9%20x" ' in out
