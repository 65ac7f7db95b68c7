# Find http(s) URLs in running plain text (relay tracks text/plain links, SES does not).
# A candidate is never shortened into a different URL: if the whole run is not a valid
# URL (a template placeholder, an IRI, Japanese text glued to it) it is left alone.
from __future__ import annotations

import re
import unicodedata

from .links import is_url

# A URL starts with http:// or https:// not glued to a preceding ASCII word character
# ("xhttps://" is not a link) and runs to whitespace or a character that delimits URLs
# in prose: < > and " (RFC 3986 Appendix C) and the backtick of Markdown code. Other
# characters invalid in URLs ({ } | \ ^ and non-ASCII) stay in the run, so that
# "https://x.test/?u={{id}}" is rejected whole rather than tracked as "...?u=".
_CANDIDATE_RE = re.compile(r"(?<![A-Za-z0-9])https?://[^\s<>\"`]+", re.IGNORECASE)
# Sentence punctuation after a URL belongs to the sentence (RFC 3986 Appendix C).
_TRAILING = set(".,;:!?'\"*")
_PAIRS = {")": "(", "]": "[", "}": "{"}


def find_urls(text: str) -> list[tuple[int, int]]:
    """Spans (start, end) of the http(s) URLs (links.is_url) in `text`, in order."""
    spans = []
    for match in _CANDIDATE_RE.finditer(text):
        end = _trim(text, match.start(), match.end())
        if is_url(text[match.start() : end]):
            spans.append((match.start(), end))
    return spans


def _trim(text: str, start: int, end: int) -> int:
    while end > start:
        last = text[end - 1]
        if last in _TRAILING or _is_closing_punctuation(last):
            end -= 1
        elif last in _PAIRS:
            # A closing bracket is part of the URL only when it closes one opened in
            # the URL: Wikipedia's /wiki/Foo_(bar) keeps it, "(see https://x.test)" not.
            url = text[start:end]
            if url.count(_PAIRS[last]) >= url.count(last):
                break
            end -= 1
        else:
            break
    return end


def _is_closing_punctuation(char: str) -> bool:
    # Non-ASCII closing quotes, guillemets, CJK full stops and commas, fullwidth closing
    # brackets (Unicode Pe, Pf, Po) end a sentence, never a URL.
    return not char.isascii() and unicodedata.category(char) in ("Pe", "Pf", "Po")
