# The copy one recipient received, rebuilt from the spooled body: the same prepare()
# and personalize() as delivery, with the running app's signer and the set's tracking
# settings. Tokens are deterministic, so its links and pixel are the ones mailed.
from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from typing import Any

from relay.config import Config
from relay.instrument import TrackingOptions, personalize, prepare
from relay.tokens import Signer

_HEAD = re.compile(r"<head(\s[^>]*)?>", re.IGNORECASE)


@dataclass(frozen=True)
class Copy:
    raw: bytes  # the whole recipient's copy, as it went upstream
    html: str | None  # the first HTML body part, decoded
    text: str | None  # else the first plain-text body part


def recipient_copy(raw: bytes, mail: dict[str, Any], index: int, *, config: Config, signer: Signer) -> bytes:
    """What delivery sent to mail["destination"][index] (an untracked message: the body as is)."""
    cset_name = (mail.get("tags", {}).get("ses:configuration-set") or [None])[0]
    cset = config.configuration_sets.get(cset_name or "")
    if cset is None or not (cset.tracks_opens or cset.tracks_clicks):
        return raw
    prepared = prepare(raw, TrackingOptions(open=cset.tracks_opens, click=cset.tracks_clicks))
    if prepared.failure is not None:
        return raw  # delivery sent it untouched too (a Rendering Failure event)
    # mail.timestamp is the acceptance time to the millisecond, which is all a token keeps.
    sent_at = datetime.fromisoformat(mail["timestamp"].replace("Z", "+00:00")).timestamp()
    return personalize(prepared, signer=signer, base_url=config.tracking_base_url(cset.name),
                       https_policy=cset.https_policy, message_id=mail["messageId"], recipient_index=index,
                       sent_at=sent_at)


def body_parts(raw: bytes) -> Copy:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    html = text = None
    assert isinstance(msg, EmailMessage)
    for part in msg.walk():
        if part.is_multipart() or part.is_attachment():
            continue
        kind = part.get_content_type()
        if kind == "text/html" and html is None:
            html = _content(part)
        elif kind == "text/plain" and text is None:
            text = _content(part)
    return Copy(raw, html, text)


def _content(part: EmailMessage) -> str:
    try:
        content = part.get_content()
    except (LookupError, ValueError):  # an unknown charset: show what is there
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return content if isinstance(content, str) else ""


def open_links_outside(html: str) -> str:
    """A <base target=_blank>, so a click opens a window (the sandbox allows popups)
    instead of navigating the preview away."""
    base = '<base target="_blank">'
    m = _HEAD.search(html)
    return html[: m.end()] + base + html[m.end():] if m else base + html
