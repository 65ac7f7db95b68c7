# Intake policy as a pure function: set selection, tags, header stripping, trace header.
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay import config as cfg
from relay.errors import Rejected
from relay.intake import accept, header_fields, new_message_id, parse_tags, split_header_block

NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=timezone.utc)
CONFIG = cfg.parse({
    "smtp": {"default_configuration_set": "default"},
    "configuration_sets": {"default": {}, "marketing": {}},
})
MSG = (b"From: a@example.com\r\nTo: b@example.org\r\nX-SES-CONFIGURATION-SET: marketing\r\n"
       b"X-SES-MESSAGE-TAGS: campaign=spring, variant=b\r\nx-ses-tenant: t1\r\n"
       b"Subject: hi\r\n  folded\r\n\r\nbody\r\nX-SES-CONFIGURATION-SET: in body stays\r\n")


def run(data: bytes, config: cfg.Config = CONFIG):
    return accept(data, config=config, helo="client.test", peer_ip="127.0.0.1",
                  recipients=["b@example.org"], now=NOW, message_id="mid")


def test_picks_set_and_strips_control_headers() -> None:
    a = run(MSG)
    assert a.configuration_set is not None and a.configuration_set.name == "marketing"
    assert a.tags == {"campaign": ["spring"], "variant": ["b"]}
    assert a.header_block.count(b"X-SES") == 2  # events keep the headers as submitted
    head, body = a.data.split(b"\r\n\r\n", 1)
    assert b"x-ses" not in head.lower()
    assert body == b"body\r\nX-SES-CONFIGURATION-SET: in body stays\r\n"
    # Everything else is byte-identical, after our Received: header.
    assert head.endswith(b"From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n  folded")
    assert a.data.startswith(b"Received: from client.test ([127.0.0.1])\r\n\tby relay.localhost (relay) with ESMTP id mid")


def test_header_name_case_insensitive_value_exact() -> None:
    a = run(b"x-ses-configuration-set: default\r\n\r\nx")
    assert a.configuration_set is not None and a.configuration_set.name == "default"
    with pytest.raises(Rejected) as e:
        run(b"X-SES-CONFIGURATION-SET: Default\r\n\r\nx")
    assert e.value.reply == "554 Transaction failed: Configuration set <Default> does not exist."


def test_default_set_when_absent_and_none_without_default() -> None:
    assert run(b"Subject: x\r\n\r\nx").configuration_set.name == "default"  # type: ignore[union-attr]
    bare = cfg.parse({"configuration_sets": {"a": {}}})
    assert run(b"Subject: x\r\n\r\nx", bare).configuration_set is None


def test_duplicate_set_header_refused() -> None:
    with pytest.raises(Rejected, match="Duplicate header"):
        run(b"X-SES-CONFIGURATION-SET: a\r\nX-SES-CONFIGURATION-SET: b\r\n\r\nx")


def test_untouched_message_is_identical_after_trace() -> None:
    raw = b"From: a@example.com\nSubject: lf only\n\nline\n"
    a = run(raw)
    assert a.data.endswith(raw)
    assert b"\r\n" not in a.data  # the trace header follows the message's line endings


@pytest.mark.parametrize("value, expected", [
    ("a=1", {"a": ["1"]}),
    ("a=1, b=two,c=x_y-z", {"a": ["1"], "b": ["two"], "c": ["x_y-z"]}),
    ("a=1, a=2", {"a": ["1", "2"]}),
    ("", {}),
])
def test_parse_tags(value: str, expected: dict) -> None:
    assert parse_tags(value) == expected


@pytest.mark.parametrize("value", ["a", "a=", "=b", "a b=c", "a=b c", "a=é", "a=" + "x" * 257])
def test_bad_tags_refused_with_reason(value: str) -> None:
    with pytest.raises(Rejected) as e:
        parse_tags(value)
    assert e.value.reply.startswith("554 Transaction failed: Invalid message tag")


def test_header_fields_spans_cover_folding() -> None:
    block, body_at = split_header_block(MSG)
    fields = header_fields(block)
    subj = [f for f in fields if f.name == "Subject"][0]
    assert subj.value == "hi  folded"
    assert block[subj.start:subj.end] == b"Subject: hi\r\n  folded\r\n"
    assert MSG[body_at:].startswith(b"body")


def test_message_ids_sort_by_time_and_are_unique() -> None:
    a, b = new_message_id(1000.0), new_message_id(2000.0)
    assert a < b and len(a) == len(b) == 60
    assert len({new_message_id(5.0) for _ in range(1000)}) == 1000


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_are_accepted_or_refused_never_crash(data: bytes) -> None:
    from relay.events.records import mail_info

    try:
        a = run(data)
    except Rejected as e:
        assert e.reply.startswith("554 Transaction failed:")
        return
    assert a.data.startswith(b"Received: ")
    info = mail_info(message_id="m", timestamp=NOW, source="a@example.com", destination=["b@example.org"],
                     header_block=a.header_block, configuration_set=None, message_tags=a.tags,
                     source_ip="127.0.0.1", caller_identity=None)
    assert info.message_id == "m"


_NAMES = st.sampled_from(["X-SES-CONFIGURATION-SET", "X-SES-MESSAGE-TAGS", "x-ses-tenant", "From", "Subject", "To"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_NAMES, st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=40)), max_size=8),
       st.sampled_from(["\r\n", "\n"]))
def test_header_soup_is_accepted_or_refused_with_554(fields: list[tuple[str, str]], eol: str) -> None:
    data = ("".join(f"{n}: {v}{eol}" for n, v in fields) + eol + "body" + eol).encode("utf-8")
    try:
        a = run(data)
    except Rejected as e:
        assert e.reply.startswith("554 Transaction failed:")
        return
    head = a.data.split(eol.encode() * 2, 1)[0].lower()
    assert b"\nx-ses-" not in head  # every control header that was accepted is stripped
