# relay.unsubscribe, pure: the list-management options, the one-click header fields
# spliced into the header block, and the {{amazonSESUnsubscribeUrl}} placeholder in
# 7bit, quoted-printable and base64 parts.
from __future__ import annotations

import base64
import email
import quopri
from email import policy

import pytest

from relay.events.records import TopicPreferences
from relay.unsubscribe import (
    PLACEHOLDER,
    ListManagement,
    add_headers,
    apply,
    opted_out,
    parse_options,
    replace_placeholder,
    with_topic,
)

URL = "https://t.example.com/u/AbC_-123"


@pytest.mark.parametrize(("value", "expected"), [
    ("news", ListManagement("news")),
    ("news; topic=weekly", ListManagement("news", "weekly")),
    ("  news ;TOPIC = weekly ", ListManagement("news", "weekly")),
    ("news;", ListManagement("news")),
])
def test_options_parse(value: str, expected: ListManagement) -> None:
    assert parse_options(value) == expected
    assert ListManagement.from_json(expected.to_json()) == expected


@pytest.mark.parametrize(("value", "problem"), [
    ("", "contact list name"),
    ("news letter", "contact list name"),
    ("news; weekly", "expected 'topic=<name>'"),
    ("news; list=weekly", "expected 'topic=<name>'"),
    ("news; topic=", "topic name"),
    ("news; topic=a b", "topic name"),
    ("x" * 65, "contact list name"),
])
def test_options_refused(value: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_options(value)


def test_headers_added_at_the_end_of_the_block_in_crlf() -> None:
    data = b"From: a@example.com\r\nSubject: Hi\r\n\r\nbody\r\n"
    assert add_headers(data, URL) == (
        b"From: a@example.com\r\nSubject: Hi\r\nList-Unsubscribe: <" + URL.encode() + b">\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\nbody\r\n")


def test_headers_keep_bare_lf_and_replace_the_senders_own() -> None:
    data = b"From: a@example.com\nList-Unsubscribe: <mailto:x@example.com>,\n <https://old.example>\nSubject: Hi\n\nbody\n"
    out = add_headers(data, URL)
    assert b"\r" not in out
    assert out == (b"From: a@example.com\nSubject: Hi\nList-Unsubscribe: <" + URL.encode() + b">\n"
                   b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\n\nbody\n")


def test_headers_without_a_body() -> None:
    out = add_headers(b"Subject: Hi", URL)
    assert out == b"Subject: Hi\r\nList-Unsubscribe: <" + URL.encode() + b">\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    msg = email.message_from_bytes(out, policy=policy.default)
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_placeholder_in_a_7bit_text_body() -> None:
    data = f"Subject: Hi\r\n\r\nUnsubscribe: {PLACEHOLDER}\r\nor {PLACEHOLDER} or {PLACEHOLDER}\r\n".encode()
    assert replace_placeholder(data, URL) == f"Subject: Hi\r\n\r\nUnsubscribe: {URL}\r\nor {URL} or {URL}\r\n".encode()


def test_placeholder_across_a_quoted_printable_soft_break() -> None:
    html = f'<p>{"x" * 60}<a href="{PLACEHOLDER}">unsubscribe</a></p>'
    qp = quopri.encodestring(html.encode(), quotetabs=False).replace(b"\n", b"\r\n")
    assert b"=\r\n" in qp and PLACEHOLDER.encode() not in qp  # the soft break cuts it
    data = (b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + qp + b"\r\n")
    out = replace_placeholder(data, URL + "?a=1&b=2")
    body = email.message_from_bytes(out, policy=policy.default).get_content()
    assert f'<a href="{URL}?a=1&amp;b=2">' in body and PLACEHOLDER not in body
    assert max(len(line) for line in out.split(b"\r\n")) <= 76


def test_placeholder_in_base64_parts_of_a_multipart() -> None:
    text = f"Hej!\nAvregistrera: {PLACEHOLDER}\nåäö\n"
    attachment = base64.encodebytes(PLACEHOLDER.encode()).replace(b"\n", b"\r\n")
    data = (b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=BB\r\n\r\n--BB\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(text.encode()).replace(b"\n", b"\r\n") +
            b"--BB\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=a.txt\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + attachment + b"--BB--\r\n")
    out = replace_placeholder(data, URL)
    msg = email.message_from_bytes(out, policy=policy.default)
    body, attached = (p.get_content() for p in msg.iter_parts())
    assert body == text.replace(PLACEHOLDER, URL)
    assert attached == PLACEHOLDER  # an attachment is not the body: untouched
    assert out.endswith(b"Content-Transfer-Encoding: base64\r\n\r\n" + attachment + b"--BB--\r\n")


def test_a_long_7bit_line_goes_quoted_printable() -> None:
    data = f"Subject: Hi\r\n\r\n{'y' * 980}{PLACEHOLDER}\r\n".encode()
    out = replace_placeholder(data, URL)
    msg = email.message_from_bytes(out, policy=policy.default)
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    body = out.split(b"\r\n\r\n", 1)[1]
    assert quopri.decodestring(body) == f"{'y' * 980}{URL}\r\n".encode()
    assert max(len(line) for line in out.split(b"\r\n")) <= 998


@pytest.mark.parametrize("data", [
    b"Subject: Hi\r\n\r\nno placeholder here\r\n",
    b"Content-Type: multipart/mixed; boundary=X\r\n\r\n--X\r\n\r\n" + PLACEHOLDER.encode(),  # never closed
    b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n!!not base64 " + PLACEHOLDER.encode(),
])
def test_left_alone_when_nothing_to_do_or_unreadable(data: bytes) -> None:
    assert replace_placeholder(data, URL) == data


def test_apply_does_both() -> None:
    out = apply(f"Subject: Hi\n\n{PLACEHOLDER}\n".encode(), URL)
    assert out == f"Subject: Hi\nList-Unsubscribe: <{URL}>\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\n\n{URL}\n".encode()


def test_preferences_after_one_click() -> None:
    none = TopicPreferences(unsubscribe_all=False, topics=())
    old = with_topic(none, "weekly")
    assert old == TopicPreferences(unsubscribe_all=False, topics=(("weekly", "OptIn"),))
    assert opted_out(old, "weekly") == TopicPreferences(unsubscribe_all=False, topics=(("weekly", "OptOut"),))
    assert opted_out(none, None) == TopicPreferences(unsubscribe_all=True, topics=())
    done = opted_out(old, "weekly")
    assert opted_out(with_topic(done, "weekly"), "weekly") == done  # a repeat changes nothing
