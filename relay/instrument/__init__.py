# Open and click instrumentation, bytes in and bytes out: prepare() parses a message
# once into byte segments and text templates; render() / personalize() fill in one
# recipient's pixel and link URLs. Nothing outside the edited spans changes (a part's
# Content-Transfer-Encoding is one when its copy must go quoted-printable: part.py).
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .. import tokens
from ..config import HTTPS_POLICIES  # SES TrackingOptions.HttpsPolicy
from ..tokens import ClickClaim, OpenClaim, Signer
from . import html, text
from .links import CONTROL_ATTRIBUTES, LinkPolicy, decide, has_credentials, link_origin
from .mime import Leaf, MimeError, decode_body, trailing_whitespace, walk
from .part import Part, part
from .template import PIXEL_SLOT, Edit, Slot, build, pixel

__all__ = ["HTTPS_POLICIES", "Prepared", "TrackedLink", "TrackingOptions", "personalize", "prepare"]


@dataclass(frozen=True)
class TrackingOptions:
    open: bool  # insert the pixel into HTML parts
    click: bool  # rewrite links
    max_links: int = 250  # SES tracks at most 250 links per message


@dataclass(frozen=True)
class TrackedLink:
    url: str  # decoded original URL (what the redirect goes to, and click.link)
    tags: dict[str, list[str]]  # from ses:tags; {} if none


@dataclass(frozen=True)
class Prepared:
    failure: str | None  # why the message passes through untouched, if it does
    links: tuple[TrackedLink, ...]  # tracked links in document order across parts
    has_pixel: bool  # whether any HTML part got a pixel slot
    # Why links stayed untracked on purpose, one human-readable line each, for the caller
    # to log (this package does no I/O). Never a URL's path or query: they carry secrets.
    notes: tuple[str, ...] = field(default=(), kw_only=True)
    _raw: bytes = field(default=b"", repr=False, compare=False)
    # The output as raw byte runs copied from the input and edited parts to re-encode.
    _chunks: tuple[memoryview | bytes | Part, ...] = field(default=(), repr=False, compare=False)

    def render(self, open_url: str | None, click_urls: Sequence[str]) -> bytes:
        """The message with one recipient's URLs: click_urls[i] replaces links[i].

        open_url None leaves the pixel out. Raises ValueError only for a caller bug
        (click_urls not matching links), never because of the message.
        """
        if len(click_urls) != len(self.links):
            raise ValueError(f"render() got {len(click_urls)} click URLs for {len(self.links)} links")
        if not self._chunks:
            return self._raw
        return b"".join(
            chunk.render(open_url, click_urls) if isinstance(chunk, Part) else chunk for chunk in self._chunks
        )


def prepare(raw: bytes, options: TrackingOptions) -> Prepared:
    """Parse and analyse `raw` once. Never raises: trouble is reported in `failure`."""
    raw = bytes(raw)
    if not (options.open or options.click):
        return Prepared(None, (), False, raw)
    try:
        return _prepare(raw, options)
    except MimeError as exc:
        return Prepared(str(exc), (), False, raw)
    except Exception as exc:  # noqa: BLE001 - the contract is: any input bytes, no exception
        return Prepared(f"internal error ({type(exc).__name__})", (), False, raw)


def personalize(
    prepared: Prepared,
    *,
    signer: Signer,
    base_url: str,
    https_policy: str,
    message_id: str,
    recipient_index: int,
    sent_at: float,
) -> bytes:
    """One recipient's copy: pixel {base}/o/{token}, links {base}/c/{token}/{url}.

    recipient_index is the recipient's position in the message's mail.destination:
    tokens name it instead of the address (links must not reveal personal data).

    https_policy is SES's HttpsPolicy: REQUIRE puts both on https; REQUIRE_OPEN_ONLY
    puts the pixel on https and gives each link the scheme of its original; OPTIONAL
    uses base_url's own scheme for both. Raises ValueError only for a bad policy or a
    base_url without a scheme (configuration errors), never because of the message.
    """
    if https_policy not in HTTPS_POLICIES:
        raise ValueError(f"https_policy must be one of {', '.join(HTTPS_POLICIES)}, not {https_policy!r}")
    scheme, sep, rest = base_url.rstrip("/").partition("://")
    if not sep or not scheme or not rest:
        raise ValueError(f"base_url must be an absolute http(s) URL, not {base_url!r}")
    base = f"{scheme}://{rest}"
    secure = f"https://{rest}"
    open_url = None
    if prepared.has_pixel:
        token = signer.sign_open(OpenClaim(message_id, recipient_index, sent_at))
        open_url = f"{base if https_policy == 'OPTIONAL' else secure}/o/{token}"
    click_urls = []
    for link in prepared.links:
        if https_policy == "REQUIRE":
            link_base = secure
        elif https_policy == "REQUIRE_OPEN_ONLY":
            link_base = f"{link.url.partition(':')[0].lower()}://{rest}"
        else:
            link_base = base
        tags = {name: list(values) for name, values in link.tags.items()}
        path = signer.sign_click(ClickClaim(message_id, recipient_index, sent_at, link.url, tags))
        click_urls.append(f"{link_base}/c/{path}")
    return prepared.render(open_url, click_urls)


# --- analysis ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Document:
    """A body part to instrument, decoded and scanned."""

    leaf: Leaf
    charset: str
    text: str
    scan: html.HtmlScan | None  # text/html
    policies: tuple[LinkPolicy, ...]  # text/html: one per anchor in scan.anchors
    url_spans: tuple[tuple[int, int], ...]  # text/plain


# Everything relay inserts must be encodable in the part's charset: all of printable
# ASCII (URLs are percent-encoded to it) and the pixel markup.
_INSERTED_PROBE = pixel("".join(chr(c) for c in range(0x21, 0x7F))) + "&quot;&#39;"


def _prepare(raw: bytes, options: TrackingOptions) -> Prepared:
    documents = [_read(raw, leaf) for leaf in walk(raw) if _is_body_text(leaf)]
    # A URL opted out in any HTML part is not tracked in the text parts either, so a
    # one-time login link marked ses:no-track stays untouched everywhere (a known
    # pitfall: SendGrid honoured the HTML opt-out but rewrote the same URL in text).
    opted_out = {
        policy.url for document in documents for policy in document.policies if policy.opted_out and policy.url
    }
    links = _Links(max(options.max_links, 0)) if options.click else None
    # Runs of the input are views of it, not copies: an attachment beside an edited part
    # costs nothing more to keep across copies.
    view = memoryview(raw)
    chunks: list[memoryview | bytes | Part] = []
    position = 0
    for document in documents:
        if document.scan is not None:
            edits = _html_edits(document, document.scan, options.open, links)
        elif links is not None:
            edits = _text_edits(document, links, opted_out)
        else:
            continue
        if not edits:
            continue
        try:
            _INSERTED_PROBE.encode(document.charset)
        except UnicodeError:
            raise MimeError(f"charset {document.charset} cannot carry tracking URLs") from None
        trailer = trailing_whitespace(raw[document.leaf.body_start : document.leaf.body_end])
        edited = part(raw, document.leaf, document.charset, trailer, document.text, build(document.text, edits))
        chunks.append(view[position : edited.start])
        # A part with no holes (only stripped attributes) is encoded once, here.
        chunks.append(edited if edited.template.slots else edited.render(None, ()))
        position = document.leaf.body_end
    has_pixel = options.open and any(document.scan is not None for document in documents)
    tracked, notes = (tuple(links.tracked), links.notes()) if links is not None else ((), ())
    if not chunks:
        return Prepared(None, tracked, has_pixel, raw, notes=notes)
    chunks.append(view[position:])
    return Prepared(None, tracked, has_pixel, raw, tuple(chunks), notes=notes)


@dataclass
class _Links:
    """The message's link decisions, in document order across parts."""

    limit: int  # SES tracks at most this many links per message
    tracked: list[TrackedLink] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # notes, in order
    over_limit: int = 0

    def track(self, url: str, tags: dict[str, list[str]]) -> int | None:
        """The index of `url` as a tracked link, or None when it is to stay as written."""
        refusal = _refusal(url, tags)
        if refusal is not None:  # before the limit: an untracked link does not use it up
            self.refused.append(refusal)
            return None
        if len(self.tracked) >= self.limit:
            self.over_limit += 1
            return None
        self.tracked.append(TrackedLink(url, tags))
        return len(self.tracked) - 1

    def notes(self) -> tuple[str, ...]:
        notes = list(dict.fromkeys(self.refused))  # the same link in the HTML and text parts: once
        if self.over_limit:
            notes.append(f"{self.over_limit} links not tracked: over the limit of {self.limit} links per message")
        return tuple(notes)


def _refusal(url: str, tags: dict[str, list[str]]) -> str | None:
    """Why a valid http(s) URL is not tracked, or None when it is."""
    if has_credentials(url):
        # A redirect would put them in the token (signed, not encrypted) and in logs.
        return f"link not tracked: it carries credentials ({link_origin(url)})"
    # The token format owns the bound; a link whose tracking URL would be too long for
    # the HTTP hops back to relay stays as written rather than broken.
    if not tokens.click_link_fits(url, tags):
        return f"link not tracked: {len(url)} characters is too long to track ({link_origin(url)})"
    return None


def _is_body_text(leaf: Leaf) -> bool:
    # Only body text: attachments (an attached .html file too), signed or encrypted
    # content and attached messages pass through byte-identical.
    return not (leaf.opaque or leaf.attachment) and leaf.content_type in ("text/html", "text/plain")


def _read(raw: bytes, leaf: Leaf) -> _Document:
    body, charset = decode_body(leaf, memoryview(raw)[leaf.body_start : leaf.body_end])  # no copy of the body
    if leaf.content_type != "text/html":
        return _Document(leaf, charset, body, None, (), tuple(text.find_urls(body)))
    scan = html.scan(body)
    policies = tuple(_policy(anchor) for anchor in scan.anchors)
    return _Document(leaf, charset, body, scan, policies, ())


def _policy(anchor: html.Anchor) -> LinkPolicy:
    href = anchor.first("href")
    return decide(None if href is None else href.value, [(a.name, a.value) for a in anchor.attributes])


def _html_edits(document: _Document, scan: html.HtmlScan, open_pixel: bool, links: _Links | None) -> list[Edit]:
    edits: list[Edit] = []
    for anchor, policy in zip(scan.anchors, document.policies, strict=True):
        # SES removes ses:no-track before delivery; relay removes every control
        # attribute (and the whitespace before it) from every anchor, tracked or not.
        edits.extend(Edit(a.lead, a.end, None) for a in anchor.attributes if a.name in CONTROL_ATTRIBUTES)
        href = anchor.first("href")
        if href is None or links is None or policy.url is None or policy.opted_out:
            continue
        index = links.track(policy.url, policy.tags)
        if index is None:
            continue
        if href.quote:  # replace inside the quotes, keeping the author's quoting style
            edits.append(Edit(href.value_start + 1, href.end - 1, Slot(index, href.quote)))
        else:
            edits.append(Edit(href.value_start, href.end, Slot(index, "unquoted")))
    # {{ses:openTracker}} in text content: the first one becomes the pixel, the others
    # are removed (SES rule); else the pixel goes where the scanner says (html.HtmlScan).
    # A placeholder inside a tag is no place for an <img>: one in a removed attribute goes
    # with it, any other stays as written.
    for number, (start, end) in enumerate(scan.placeholders):
        edits.append(Edit(start, end, PIXEL_SLOT if number == 0 and open_pixel else None))
    if open_pixel and not scan.placeholders:
        edits.append(Edit(scan.pixel_at, scan.pixel_at, PIXEL_SLOT))
    return edits


def _text_edits(document: _Document, links: _Links, opted_out: set[str]) -> list[Edit]:
    edits: list[Edit] = []
    for start, end in document.url_spans:
        url = document.text[start:end]
        if url in opted_out or (index := links.track(url, {})) is None:
            continue
        edits.append(Edit(start, end, Slot(index, "text")))
    return edits
