"""Links left untracked on purpose (credentials, too long, over the limit) stay as written,
and Prepared.notes says why in one line each, without the URL's path or query."""

from __future__ import annotations

import pytest

import relay.tokens
from relay.instrument import TrackingOptions, prepare
from tests.instrument.faithful import assert_faithful, render_sentinels

CLICKS = TrackingOptions(open=False, click=True)
LONG = "https://x.test/?q=" + "s3cret" * 1500 + "abcdefghij"  # 9028 characters: no token that long fits
TOO_LONG = "link not tracked: 9028 characters is too long to track (https://x.test)"
CREDENTIALS = "link not tracked: it carries credentials (https://x.test)"


def message(html: str = "", text: str = "") -> bytes:
    return (
        "Content-Type: multipart/alternative; boundary=b\r\n\r\n"
        f"--b\r\nContent-Type: text/plain\r\n\r\n{text}\r\n"
        f"--b\r\nContent-Type: text/html\r\n\r\n{html}\r\n--b--\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("html", "text", "urls", "notes"),
    [
        # too long: tracked nowhere, and it does not use up the link limit
        (f'<a href="{LONG}">a</a><a href="https://x.test/b">b</a>', "", ["https://x.test/b"], [TOO_LONG]),
        ("", f"see {LONG} or https://x.test/b", ["https://x.test/b"], [TOO_LONG]),
        (f'<a href="{LONG}">a</a>', f"see {LONG}", [], [TOO_LONG]),  # one note per reason and origin
        # credentials (user and password, or a user alone)
        ('<a href="https://user:pass@x.test/a?t=s3cret">a</a>', "", [], [CREDENTIALS]),
        ('<a href="http://user@x.test">a</a>', "", [], [CREDENTIALS.replace("https", "http")]),
        ("", "login at https://user:pass@x.test/a?t=s3cret now", [], [CREDENTIALS]),
        # opted out: no note (the author asked for it)
        (f'<a ses:no-track href="{LONG}">a</a>', "", [], []),
        ('<a href="https://x.test/ok">ok</a>', "https://x.test/ok", ["https://x.test/ok"] * 2, []),
    ],
)
def test_untracked_links_and_their_notes(html: str, text: str, urls: list[str], notes: list[str]) -> None:
    raw = message(html, text)
    # A limit of one link where one is expected: an untracked link must not use it up.
    prepared = prepare(raw, TrackingOptions(open=False, click=True, max_links=1 if len(urls) == 1 else 250))
    assert prepared.failure is None
    assert [link.url for link in prepared.links] == urls
    assert list(prepared.notes) == notes
    assert_faithful(raw, render_sentinels(prepared), prepared)  # untracked links: exactly as written
    assert not any("s3cret" in note or "?" in note or "pass" in note for note in prepared.notes)


def test_links_over_the_limit_are_counted_in_one_note() -> None:
    html = "".join(f'<a href="https://x.test/{i}">{i}</a>' for i in range(5))
    prepared = prepare(message(html), TrackingOptions(open=False, click=True, max_links=3))
    assert len(prepared.links) == 3
    assert prepared.notes == ("2 links not tracked: over the limit of 3 links per message",)


def test_no_notes_without_click_tracking() -> None:
    prepared = prepare(message(f'<a href="{LONG}">a</a>', LONG), TrackingOptions(open=True, click=False))
    assert prepared.notes == ()
    assert prepare(message(), CLICKS).notes == ()


def test_the_token_format_decides_what_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    # relay.tokens.click_link_fits is the contract: the engine asks it with the link's tags.
    seen: list[tuple[str, dict[str, list[str]]]] = []

    def fits(url: str, tags: dict[str, list[str]]) -> bool:
        seen.append((url, tags))
        return not tags

    monkeypatch.setattr(relay.tokens, "click_link_fits", fits)
    html = '<a ses:tags="k:v" href="https://x.test/tagged">t</a><a href="https://x.test/plain">p</a>'
    prepared = prepare(message(html, "https://x.test/text"), CLICKS)
    assert [link.url for link in prepared.links] == ["https://x.test/text", "https://x.test/plain"]
    assert seen == [("https://x.test/text", {}), ("https://x.test/tagged", {"k": ["v"]}), ("https://x.test/plain", {})]
    assert prepared.notes == ("link not tracked: 21 characters is too long to track (https://x.test)",)
