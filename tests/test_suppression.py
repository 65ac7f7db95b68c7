# relay.suppression, pure: the CSV of SES's bulk import and relay's refusal replies.
from __future__ import annotations

import pytest

from relay.suppression import (
    CsvError,
    SuppressedAddress,
    applies,
    parse_csv,
    render_csv,
    suppressed_reply,
    unsubscribed_reply,
)


def test_csv_parsed_lower_cased_last_reason_wins() -> None:
    text = "emailAddress,reason\nAna@Example.com,bounce\n\nbob@example.org, COMPLAINT\nana@example.com,COMPLAINT\n"
    assert parse_csv(text) == [("ana@example.com", "COMPLAINT"), ("bob@example.org", "COMPLAINT")]


def test_csv_every_bad_line_is_named() -> None:
    text = ("emailAddress,reason\nok@example.com,BOUNCE\nnot-an-address,BOUNCE\nx@example.com,SPAM\n"
            "y@example.com\nz@example.com,BOUNCE,extra\n")
    with pytest.raises(CsvError) as e:
        parse_csv(text)
    assert [n for n, _ in e.value.problems] == [3, 4, 5, 6]
    assert "not an email address" in e.value.problems[0][1]
    assert "BOUNCE or COMPLAINT" in e.value.problems[1][1]


@pytest.mark.parametrize("text", ["", "ana@example.com,BOUNCE\n", "address,reason\n"])
def test_csv_needs_the_header(text: str) -> None:
    with pytest.raises(CsvError, match="line 1: expected the header emailAddress,reason"):
        parse_csv(text)


def test_csv_round_trip() -> None:
    entries = [SuppressedAddress(address="a@example.com", reason="BOUNCE", last_update=0.0, message_id="m"),
               SuppressedAddress(address="b@example.com", reason="COMPLAINT", last_update=1.0, message_id=None)]
    text = render_csv(entries)
    assert text == "emailAddress,reason\na@example.com,BOUNCE\nb@example.com,COMPLAINT\n"
    assert parse_csv(text) == [("a@example.com", "BOUNCE"), ("b@example.com", "COMPLAINT")]


def test_replies() -> None:
    entry = SuppressedAddress(address="a@example.com", reason="BOUNCE", last_update=86400.0, message_id="m")
    reply = suppressed_reply("A@example.com", entry)
    assert (reply.code, reply.refused) == (550, "OnAccountSuppressionList")
    assert reply.message == "5.1.1 <A@example.com>: on the account suppression list (BOUNCE since 1970-01-02T00:00:00Z)"
    gone = unsubscribed_reply("a@example.com", "contact list news, topic weekly")
    assert (gone.code, gone.refused) == (550, "UnsubscribedRecipient")
    assert "contact list news, topic weekly" in gone.message
    assert applies(entry, frozenset({"bounce"})) and not applies(entry, frozenset({"complaint"}))
