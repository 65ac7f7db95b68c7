# Which links relay tracks: the RFC 3986 http(s) test (never a URL with credentials), SES's
# `ses:no-track` / `ses:tags` attributes and the other providers' per-link opt-outs, all of
# which are stripped from instrumented mail. A URL opted out in HTML is not tracked in the
# message's text parts either (applied in relay.instrument._prepare).
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# SES tracks only absolute URLs that are valid RFC 3986; anything else (an unencoded
# space, a template placeholder such as {{url}} / *|URL|* / %%url%%, a stray '%', a
# non-ASCII IRI) is left untouched. Two deliberate leniencies, common in real mail and
# harmless for a redirect: '[' and ']' outside the host (PHP-style `a[]=1` queries)
# and a second '#' in the fragment.
_SCHEME = re.compile(r"https?://", re.IGNORECASE)
_URL_CHARS = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?#\[\]]|%[0-9A-Fa-f]{2})*")
_REG_NAME = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")  # RFC 3986 §3.2.2
_USERINFO = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:]|%[0-9A-Fa-f]{2})*")  # §3.2.1
_IP_LITERAL = re.compile(r"\[[0-9A-Fa-f:.]+\]")  # §3.2.2 (IPv6 / IPvFuture, loosely)
_PORT = re.compile(r"[0-9]*")


def is_url(url: str) -> bool:
    """True for an absolute http/https URL that is valid RFC 3986 and has a host."""
    scheme = _SCHEME.match(url)
    if scheme is None or not _URL_CHARS.fullmatch(url, scheme.end()):
        return False
    userinfo, at, hostport = _authority(url, scheme.end()).rpartition("@")
    if at and not _USERINFO.fullmatch(userinfo):
        return False
    if hostport.startswith("["):
        host, _, rest = hostport.partition("]")
        if not _IP_LITERAL.fullmatch(host + "]") or (rest and not rest.startswith(":")):
            return False
        port = rest[1:]
    else:
        host, _, port = hostport.partition(":")
        if not _REG_NAME.fullmatch(host):
            return False
    return bool(_PORT.fullmatch(port))


def has_credentials(url: str) -> bool:
    """Whether an http(s) URL has userinfo (RFC 3986 §3.2.1), even an empty one."""
    scheme = _SCHEME.match(url)
    return scheme is not None and "@" in _authority(url, scheme.end())


def is_trackable(url: str) -> bool:
    """A valid http(s) URL without credentials: a redirect would carry them in its token
    (which is signed, not encrypted) and in every hop's logs (RFC 3986 §7.5)."""
    return is_url(url) and not has_credentials(url)


def link_origin(url: str) -> str:
    """scheme://host[:port] of an http(s) URL: what a note may say about a link (its
    userinfo, path and query can carry secrets)."""
    scheme = _SCHEME.match(url)
    assert scheme is not None
    host = _authority(url, scheme.end()).rpartition("@")[2]
    return scheme[0].lower() + host


def _authority(url: str, start: int) -> str:
    return re.split(r"[/?#]", url[start:], maxsplit=1)[0]


# URL standard, "basic URL parser": an href loses its leading and trailing C0 controls and
# spaces, then every ASCII tab and newline ("https://x.test/a\n b" keeps its space).
_C0_OR_SPACE = "".join(map(chr, range(0x21)))
_TAB_OR_NEWLINE = str.maketrans("", "", "\t\n\r")


def url_from_href(href: str) -> str:
    """The URL a browser follows for a decoded href value."""
    return href.strip(_C0_OR_SPACE).translate(_TAB_OR_NEWLINE)


# Per-link opt-outs: attribute name -> values that opt out (None: present = opt out).
# ses:no-track is SES's own; the rest are honoured so mail written for SendGrid,
# Postmark, SparkPost, Mailgun or Mandrill keeps its intent when relayed.
_OPT_OUTS: dict[str, frozenset[str] | None] = {
    "ses:no-track": None,
    "clicktracking": frozenset({"off"}),  # SendGrid
    "data-pm-no-track": None,  # Postmark
    "data-msys-clicktrack": frozenset({"0"}),  # SparkPost
    "disable-tracking": frozenset({"true"}),  # Mailgun
    "mc:disable-tracking": None,  # Mandrill
}
SES_TAGS = "ses:tags"
# Every control attribute is removed from the output, whatever its value (SES removes
# ses:no-track before delivery; a `clicktracking="on"` means nothing to a recipient).
CONTROL_ATTRIBUTES = frozenset(_OPT_OUTS) | {SES_TAGS}


def opts_out(attributes: Iterable[tuple[str, str | None]]) -> bool:
    """Whether lowercased (name, decoded value) pairs contain a tracking opt-out."""
    for name, value in attributes:
        if name not in _OPT_OUTS:
            continue
        values = _OPT_OUTS[name]
        if values is None or (value or "").strip().lower() in values:
            return True
    return False


# ses:tags is CSS-like "name:value;name2:value2;" (trailing ';' allowed). SES allows only
# ASCII letters, digits, '_' and '-' in link tag names and values; relay drops each pair
# that breaks this (or is longer than SES's 256-character message-tag limit, since no
# link-tag limit is documented) and keeps the valid ones, instead of rejecting the link.
_TAG_PART = re.compile(r"[A-Za-z0-9_-]{1,256}")


def parse_ses_tags(value: str | None) -> dict[str, list[str]]:
    tags: dict[str, list[str]] = {}
    for pair in (value or "").split(";"):
        name, sep, tag_value = pair.partition(":")
        name, tag_value = name.strip(), tag_value.strip()
        if not sep or not _TAG_PART.fullmatch(name) or not _TAG_PART.fullmatch(tag_value):
            continue
        values = tags.setdefault(name, [])
        if tag_value not in values:
            values.append(tag_value)
    return tags


@dataclass(frozen=True)
class LinkPolicy:
    """What the attributes of one <a>/<area> say about its link."""

    url: str | None  # the href as a valid http(s) URL (is_url); None when it is not one
    tags: dict[str, list[str]]  # from ses:tags
    opted_out: bool  # ses:no-track or another provider's opt-out

    @property
    def tracked(self) -> bool:
        """Worth tracking as far as the markup says (credentials and length are the engine's call)."""
        return self.url is not None and not self.opted_out


def decide(href: str | None, attributes: Iterable[tuple[str, str | None]]) -> LinkPolicy:
    """Policy for an anchor from its decoded href and its (name, value) attributes."""
    pairs = list(attributes)
    tags = parse_ses_tags(next((value for name, value in pairs if name == SES_TAGS), None))
    url = None if href is None else url_from_href(href)
    return LinkPolicy(url if url is not None and is_url(url) else None, tags, opts_out(pairs))
