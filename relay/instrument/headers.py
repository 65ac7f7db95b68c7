# Set a part's Content-Transfer-Encoding over the raw bytes of its header block: the
# value is spliced in place (or one field is added before the blank line), and every
# other byte of the block stays as it was (RFC 5322 §2.2, RFC 2045 §6).
from __future__ import annotations

from ..mime import read_header, splice_transfer_encoding


def set_transfer_encoding(raw: bytes, start: int, body_start: int, value: bytes) -> tuple[int, bytes] | None:
    """Splice Content-Transfer-Encoding `value` into the header block raw[start:body_start].

    Returns (at, head): raw[at:body_start] becomes `head` and nothing before `at`
    changes. None when the block is not plain enough to edit without guessing (a line
    that is not a field, a bare CR, two CTE fields): the caller leaves the part as is.
    For a whole message (start 0) without MIME-Version, "MIME-Version: 1.0" is added as
    well: RFC 2045 §4 gives a Content-Transfer-Encoding no meaning without it.
    """
    header = read_header(raw, start, body_start)
    # A line that is not a field, a bare CR (the email package breaks the line there) or no
    # blank line (the block runs to the end and there is no body): no safe reading.
    if header.bad_line is not None or header.bare_cr or not header.blank:
        return None
    # A field is read only in the form the email package reads as a header (which is how
    # mime.walk() found the CTE): no white space before the colon.
    if any(field.spaced for field in header.fields):
        return None
    if len(header.named(b"content-transfer-encoding")) > 1:
        return None  # ambiguous: readers disagree on which one counts
    at, head = splice_transfer_encoding(
        raw,
        header,
        value,
        eol=header.last_eol or header.blank,
        mime_version=start == 0 and not header.named(b"mime-version"),
        keep_layout=True,
    )
    return at, head + raw[header.body : body_start]  # the blank line may end before body_start
